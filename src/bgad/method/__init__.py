"""The method, in reading order: frozen backbone features (``backbones``, ``features``), their per-position
normalization (``whitening``), the conditional flows (``encoding``, ``flow``, one ``level`` per feature stride),
the boundary-guided semi-push-pull loss (``losses``), training with out-of-fold calibration vectors (``crossfit``,
``training``), the anomaly score and its calibration (``scoring``, ``tiling``), the decision thresholds
(``thresholds``) and the model that holds it all (``model``). docs/method.md follows the same order.
"""
