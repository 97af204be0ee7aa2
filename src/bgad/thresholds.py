"""Decision thresholds chosen without the test set: from normal images, refined with the known anomalies.

Training normals score lower than unseen normals (the flows were fitted on them), so a threshold set on them
alone is optimistic; the known anomalies, when there are some, move it up towards where defects really score.
``bgad calibrate`` sets them again from good images the model has never seen.

Masks follow the verdict: an image judged good gets an empty mask, so the pixel threshold only has to separate
defect pixels from normal ones on flagged images. It is the one that makes the best masks (mean per-image F1) on
the known anomalies and the flagged normals, never lower than the normals' pixel quantile.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .config import ThresholdConfig
from .errors import BGADError
from .metrics import mask_overlaps
from .scoring import image_scores
from .tiling import image_max

_PIXEL_CANDIDATES = 128  # pixel thresholds tried: quantiles of the known anomalies' defect-pixel values


class Thresholds(NamedTuple):
    image: float  # an image is anomalous when its score is above this
    pixel: float  # a pixel of an anomalous image belongs to the defect mask when its map value is above this


def normalized_score(score: float | np.ndarray, threshold: float) -> float | np.ndarray:
    """A score mapped to [0, 1] with the image threshold at 0.5: ``clip(score / (2 threshold), 0, 1)``.

    Calibrated scores start at 0 (the most normal training pixel), so 0 is as normal as training, 0.5 is the
    threshold and 1 is twice the threshold or more (anomalib's ``pred_score`` convention: above 0.5 is anomalous).

    >>> normalized_score(np.array([0.0, 1.0, 2.0, 5.0]), threshold=2.0)
    array([0.  , 0.25, 0.5 , 1.  ])
    """
    scores = np.asarray(score, dtype=np.float64)
    # A threshold of 0 or below (every normal scored 0) is degenerate: the verdict alone.
    out = np.clip(scores / (2 * threshold), 0.0, 1.0) if threshold > 0 else (scores > threshold).astype(np.float64)
    return out if out.ndim else float(out)


def threshold_for_fpr(normal_scores: np.ndarray, fpr: float) -> float:
    """The image threshold that flags (score above it) at most a fraction ``fpr`` of ``normal_scores``, and as
    close to it as the scores allow.

    >>> threshold_for_fpr(np.arange(100.0), 0.05)
    94.0
    """
    if not 0 <= fpr < 1:
        raise BGADError(f"the target false-positive rate must be in [0, 1), got {fpr}")
    if len(normal_scores) == 0:
        raise BGADError("no normal scores to set a threshold from")
    ranked = np.sort(np.asarray(normal_scores, dtype=np.float64))[::-1]
    allowed = int(np.floor(fpr * len(ranked) + 1e-9))  # how many may be flagged
    return float(ranked[min(allowed, len(ranked) - 1)])  # the highest score not flagged


def fit_thresholds(
    normal_maps: Tensor,
    anomaly_maps: Tensor | None,
    anomaly_masks: Tensor | None,
    config: ThresholdConfig,
    *,
    normal_valid: Tensor | None = None,
    anomaly_valid: Tensor | None = None,
    normal_owner: np.ndarray | None = None,
    anomaly_owner: np.ndarray | None = None,
    target_fpr: float | None = None,
) -> Thresholds:
    """Thresholds from anomaly maps (N, S, S) of normal images and, optionally, of known anomalies + masks.

    Image: the ``image_quantile`` of the normals' scores (or the threshold flagging ``target_fpr`` of them); if
    every known anomaly scores above it, the midpoint between it and the lowest known-anomaly score (not with
    ``target_fpr``, which the user asked for). Pixel: the ``pixel_quantile`` of the normals' pixels; with known
    anomalies, the threshold giving the best mean per-image mask F1 on them and on the flagged normals if that is
    higher. ``normal_valid`` and ``anomaly_valid`` (bool, shaped as the maps) restrict everything to those pixels.
    With a tiled model the maps are tiles' and ``*_owner`` give each tile's image: image scores are maxima over an
    image's tiles, and a tile of a flagged image gets a mask (mask F1 is then per tile).
    """
    normal_scores = image_max(image_scores(normal_maps, normal_valid).numpy(), normal_owner)
    if target_fpr is None:
        image = float(np.quantile(normal_scores, config.image_quantile))
    else:
        image = threshold_for_fpr(normal_scores, target_fpr)
    pixel = float(np.quantile(_pixels(normal_maps, normal_valid), config.pixel_quantile))
    if anomaly_maps is None or len(anomaly_maps) == 0 or not config.refine_with_anomalies:
        return Thresholds(image, pixel)
    anomaly_scores = image_max(image_scores(anomaly_maps, anomaly_valid).numpy(), anomaly_owner)
    if target_fpr is None and anomaly_scores.min() > image:
        image = (image + float(anomaly_scores.min())) / 2
    anomaly_content, normal_content = _content(anomaly_valid, anomaly_maps), _content(normal_valid, normal_maps)
    defect_pixels = anomaly_maps[anomaly_masks & anomaly_content].numpy()
    if defect_pixels.size:
        flagged = torch.from_numpy(_per_map(normal_scores > image, normal_owner))  # flagged normals get masks too
        maps = torch.cat([anomaly_maps, normal_maps[flagged]])
        masks = torch.cat([anomaly_masks, torch.zeros_like(normal_content[flagged])])
        valid = torch.cat([anomaly_content, normal_content[flagged]])
        judged_anomalies = torch.from_numpy(_per_map(anomaly_scores > image, anomaly_owner))
        judged = torch.cat([judged_anomalies, torch.ones(int(flagged.sum()), dtype=torch.bool)])
        pixel = max(pixel, best_mask_threshold(maps, masks, valid, judged, defect_pixels))
    return Thresholds(image, pixel)


def best_mask_threshold(
    maps: Tensor, masks: Tensor, valid: Tensor | None, flagged: Tensor, defect_pixels: np.ndarray
) -> float:
    """Among quantiles of ``defect_pixels``, the pixel threshold with the best mean per-image mask F1 over the
    images (N, S, S); images not ``flagged`` get empty masks whatever the threshold. Ties go to the highest (the
    fewest false-positive pixels on what was not seen)."""
    # Just below quantiles of the defect pixels' values (in the maps' float32), so that "above" includes them.
    levels = np.quantile(defect_pixels, np.linspace(0, 1, _PIXEL_CANDIDATES), method="lower").astype(np.float32)
    candidates = np.unique(np.nextafter(levels, np.float32(-np.inf)))
    keep = flagged[:, None, None]
    best, best_f1 = float(candidates[0]), -1.0
    for threshold in candidates:
        f1 = float(mask_overlaps((maps > float(threshold)) & keep, masks, valid=valid)[1].mean())
        if f1 >= best_f1:
            best, best_f1 = float(threshold), f1
    return best


def _per_map(per_image: np.ndarray, owner: np.ndarray | None) -> np.ndarray:
    """A per-image value for every map: the image's own, or its image's for a tile."""
    return per_image if owner is None else per_image[owner]


def _content(valid: Tensor | None, maps: Tensor) -> Tensor:
    return torch.ones_like(maps, dtype=torch.bool) if valid is None else valid


def _pixels(values: Tensor, valid: Tensor | None) -> np.ndarray:
    """The values (all, or the ``valid`` ones) as a flat numpy array."""
    return (values if valid is None else values[valid]).numpy().ravel()


def override_thresholds(
    thresholds: Thresholds,
    normal_scores: np.ndarray | None,
    *,
    image: float | None = None,
    pixel: float | None = None,
    target_fpr: float | None = None,
) -> Thresholds:
    """The thresholds a user asked for at inference: an explicit ``image`` and/or ``pixel`` threshold, or the
    image threshold that flags ``target_fpr`` of the stored ``normal_scores`` (the good images the model was last
    calibrated on); what is not given stays as ``thresholds``."""
    if image is not None and target_fpr is not None:
        raise BGADError("give an image threshold or a target false-positive rate, not both")
    if target_fpr is not None:
        if normal_scores is None:
            raise BGADError("this model stores no normal scores (saved by an older bgad): run `bgad calibrate` first")
        image = threshold_for_fpr(normal_scores, target_fpr)
    for name, value in (("image", image), ("pixel", pixel)):
        if value is not None and not np.isfinite(value):
            raise BGADError(f"the {name} threshold must be a finite number, got {value}")
    return Thresholds(thresholds.image if image is None else image, thresholds.pixel if pixel is None else pixel)
