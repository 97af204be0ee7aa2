"""Decision thresholds chosen without the test set: from the training normals, refined with the known anomalies.

Training normals score lower than unseen normals (the flows were fitted on them), so a threshold set on them
alone is optimistic; the known anomalies, when there are some, move it up towards where defects really score.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from sklearn.metrics import precision_recall_curve
from torch import Tensor

from .config import ThresholdConfig
from .scoring import image_scores


class Thresholds(NamedTuple):
    image: float  # an image is anomalous when its score is above this
    pixel: float  # a pixel belongs to the defect mask when its anomaly-map value is above this


def fit_thresholds(
    normal_maps: Tensor,
    anomaly_maps: Tensor | None,
    anomaly_masks: Tensor | None,
    config: ThresholdConfig,
    *,
    normal_valid: Tensor | None = None,
    anomaly_valid: Tensor | None = None,
) -> Thresholds:
    """Thresholds from anomaly maps (N, S, S) of training normals and, optionally, of known anomalies + masks.

    Image: the ``image_quantile`` of the normals' scores; if every known anomaly scores above it, the midpoint
    between it and the lowest known-anomaly score. Pixel: the ``pixel_quantile`` of the normals' pixels; with
    known anomalies, the F1-optimal threshold on their pixels if that is higher. ``normal_valid`` and
    ``anomaly_valid`` (bool, shaped as the maps) restrict everything to those pixels (letterboxed content).
    """
    normal_scores = image_scores(normal_maps, normal_valid).numpy()
    image = float(np.quantile(normal_scores, config.image_quantile))
    pixel = float(np.quantile(_pixels(normal_maps, normal_valid), config.pixel_quantile))
    if anomaly_maps is None or len(anomaly_maps) == 0 or not config.refine_with_anomalies:
        return Thresholds(image, pixel)
    lowest_anomaly = float(image_scores(anomaly_maps, anomaly_valid).min())
    if lowest_anomaly > image:
        image = (image + lowest_anomaly) / 2
    labels = _pixels(anomaly_masks, anomaly_valid)
    if labels.any() and not labels.all():
        precision, recall, candidates = precision_recall_curve(labels, _pixels(anomaly_maps, anomaly_valid))
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        pixel = max(pixel, float(candidates[np.argmax(f1[:-1])]))
    return Thresholds(image, pixel)


def _pixels(values: Tensor, valid: Tensor | None) -> np.ndarray:
    """The values (all, or the ``valid`` ones) as a flat numpy array."""
    return (values if valid is None else values[valid]).numpy().ravel()
