"""What bgad writes to disk and reads back: the atomic write and JSON descriptions (``serialization``), training
checkpoints (``checkpoint``), model files (``model_files``) and the checks that make a damaged model fail closed
(``model_checks``)."""
