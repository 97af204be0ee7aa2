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


class Thresholds(NamedTuple):
    image: float  # an image is anomalous when its score is above this
    pixel: float  # a pixel belongs to the defect mask when its anomaly-map value is above this


def fit_thresholds(
    normal_maps: Tensor, anomaly_maps: Tensor | None, anomaly_masks: Tensor | None, config: ThresholdConfig
) -> Thresholds:
    """Thresholds from anomaly maps (N, S, S) of training normals and, optionally, of known anomalies + masks.

    Image: the ``image_quantile`` of the normals' scores; if every known anomaly scores above it, the midpoint
    between it and the lowest known-anomaly score. Pixel: the ``pixel_quantile`` of the normals' pixels; with
    known anomalies, the F1-optimal threshold on their pixels if that is higher.
    """
    normal_scores = normal_maps.flatten(1).amax(dim=1).numpy()
    image = float(np.quantile(normal_scores, config.image_quantile))
    pixel = float(np.quantile(normal_maps.numpy().ravel(), config.pixel_quantile))
    if anomaly_maps is None or len(anomaly_maps) == 0 or not config.refine_with_anomalies:
        return Thresholds(image, pixel)
    lowest_anomaly = float(anomaly_maps.flatten(1).amax(dim=1).min())
    if lowest_anomaly > image:
        image = (image + lowest_anomaly) / 2
    labels = anomaly_masks.numpy().ravel()
    if labels.any() and not labels.all():
        precision, recall, candidates = precision_recall_curve(labels, anomaly_maps.numpy().ravel())
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        pixel = max(pixel, float(candidates[np.argmax(f1[:-1])]))
    return Thresholds(image, pixel)
