"""A fitted model on an inspection PC: the ONNX export and its detector (``export``) and the inference engines
that run it (``engines``)."""
