"""Evaluation metrics: image/pixel AUROC and average precision, and AUPRO.

Convention: a higher score means more anomalous; labels and masks are nonzero (True) for anomalous.
Inputs may be numpy arrays or torch tensors. Pixel metrics take an optional ``valid`` (N, H, W) boolean array:
only those pixels count (the content of letterboxed images; pad pixels are neither normal nor defect).

AUPRO follows the official MVTec AD evaluation code (Bergmann et al., "The MVTec Anomaly Detection
Dataset: A Comprehensive Real-World Dataset for Unsupervised Anomaly Detection", IJCV 2021): ground-truth
regions are the 8-connected components of each mask, every distinct score is a threshold, the FPR is
taken over all normal pixels of the set and the PRO is the mean per-region overlap over all regions of
the set. The curve is integrated up to ``fpr_limit`` (interpolated there) and normalised by it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

ArrayLike = np.ndarray | torch.Tensor


class UndefinedMetricWarning(UserWarning):
    """Warned when a metric is undefined because only one class is present; the metric returns NaN."""


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    return np.asarray(x)


def _validate(scores: ArrayLike, labels: ArrayLike, ndim: int, fpr_limit: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Convert to numpy, check shapes and ``fpr_limit``; return (float64 scores, bool labels)."""
    s, y = _to_numpy(scores), _to_numpy(labels)
    if s.shape != y.shape:
        raise ValueError(f"scores/maps shape {s.shape} does not match labels/masks shape {y.shape}")
    if s.ndim != ndim or s.size == 0:
        raise ValueError(f"expected a non-empty {ndim}-D array, got shape {s.shape}")
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    return s.astype(np.float64, copy=False), y.astype(bool, copy=False)


def _one_class(labels: np.ndarray, name: str) -> bool:
    """Warn and return True when ``labels`` holds only one class (the metric is then undefined)."""
    if labels.all() or not labels.any():
        msg = f"{name} is undefined when only one class is present; returning nan"
        warnings.warn(msg, UndefinedMetricWarning, stacklevel=3)
        return True
    return False


def _binary_metric(metric: Callable, scores: np.ndarray, labels: np.ndarray, name: str) -> float:
    if _one_class(labels, name):
        return float("nan")
    return float(metric(labels.ravel(), scores.ravel()))


def image_auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Image-level area under the ROC curve of scores (N,) against labels (N,)."""
    return _binary_metric(roc_auc_score, *_validate(scores, labels, ndim=1), "image AUROC")


def image_ap(scores: ArrayLike, labels: ArrayLike) -> float:
    """Image-level average precision of scores (N,) against labels (N,)."""
    return _binary_metric(average_precision_score, *_validate(scores, labels, ndim=1), "image AP")


def _valid(valid: ArrayLike | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if valid is None:
        return None
    keep = _to_numpy(valid).astype(bool, copy=False)
    if keep.shape != shape:
        raise ValueError(f"valid shape {keep.shape} does not match maps shape {shape}")
    return keep


def _content(maps: np.ndarray, masks: np.ndarray, valid: ArrayLike | None) -> tuple[np.ndarray, np.ndarray]:
    """The ``valid`` pixels of maps and masks, flattened (all of them, unflattened, when ``valid`` is None)."""
    keep = _valid(valid, maps.shape)
    return (maps, masks) if keep is None else (maps[keep], masks[keep])


def pixel_auroc(anomaly_maps: ArrayLike, masks: ArrayLike, *, valid: ArrayLike | None = None) -> float:
    """Pixel-level AUROC of anomaly maps (N, H, W) against ground-truth masks (N, H, W)."""
    pixels = _content(*_validate(anomaly_maps, masks, ndim=3), valid)
    return _binary_metric(roc_auc_score, *pixels, "pixel AUROC")


def pixel_ap(anomaly_maps: ArrayLike, masks: ArrayLike, *, valid: ArrayLike | None = None) -> float:
    """Pixel-level average precision of anomaly maps (N, H, W) against masks (N, H, W)."""
    pixels = _content(*_validate(anomaly_maps, masks, ndim=3), valid)
    return _binary_metric(average_precision_score, *pixels, "pixel AP")


def pro_curve(
    anomaly_maps: ArrayLike, masks: ArrayLike, *, valid: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-region-overlap curve over all thresholds, as in the official MVTec AD evaluation.

    Args:
        anomaly_maps: Scores of shape (N, H, W).
        masks: Ground truth of shape (N, H, W); needs at least one defect and one normal pixel.
        valid: Optional (N, H, W) boolean array; other pixels are left out (also from the defect regions).

    Returns:
        ``(fpr, pro)``, non-decreasing, starting at (0, 0) and ending at (1, 1); one point per distinct
        score (threshold ``score >= t`` for descending ``t``).
    """
    maps, masks = _validate(anomaly_maps, masks, ndim=3)
    keep = _valid(valid, maps.shape)
    if keep is not None:
        masks = masks & keep
    regions = np.zeros(masks.shape, dtype=np.int64)  # 0 = normal, k > 0 = k-th region of the whole set
    num_regions = 0
    for i, mask in enumerate(masks):
        labeled, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
        regions[i] = np.where(labeled > 0, labeled + num_regions, 0)
        num_regions += n
    scores, regions = (a.ravel() for a in _content(maps, regions, keep))
    area = np.bincount(regions)  # area[0] is the number of normal pixels
    if num_regions == 0 or area[0] == 0:
        raise ValueError("the PRO curve needs at least one defect pixel and one normal pixel")

    order = np.argsort(scores, kind="stable")[::-1]
    scores, regions = scores[order], regions[order]
    fpr = np.cumsum(regions == 0) / area[0]
    pro = np.cumsum(np.where(regions > 0, 1.0 / area[regions], 0.0)) / num_regions
    last_of_run = np.append(scores[1:] != scores[:-1], True)
    zero = np.zeros(1)
    return np.concatenate([zero, fpr[last_of_run]]), np.concatenate([zero, np.minimum(pro[last_of_run], 1.0)])


def aupro(
    anomaly_maps: ArrayLike, masks: ArrayLike, *, fpr_limit: float = 0.3, valid: ArrayLike | None = None
) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD AUPRO), in [0, 1].

    Args:
        anomaly_maps: Scores of shape (N, H, W).
        masks: Ground truth of shape (N, H, W).
        fpr_limit: Integration limit on the false-positive rate, in (0, 1].
        valid: Optional (N, H, W) boolean array of the pixels that count (the FPR is over valid normal pixels).

    Returns:
        The area divided by ``fpr_limit``; NaN (with an ``UndefinedMetricWarning``) when the masks
        contain no defect pixel or no normal pixel.
    """
    maps, masks = _validate(anomaly_maps, masks, ndim=3, fpr_limit=fpr_limit)
    if _one_class(_content(maps, masks, valid)[1], "AUPRO"):
        return float("nan")
    fpr, pro = pro_curve(maps, masks, valid=valid)
    n = int(np.searchsorted(fpr, fpr_limit, side="right"))  # points with fpr <= fpr_limit (>= 1)
    x, y = fpr[:n], pro[:n]
    if x[-1] < fpr_limit:  # fpr[-1] == 1 >= fpr_limit, so fpr[n] exists and fpr[n] > fpr_limit
        y_limit = y[-1] + (pro[n] - y[-1]) * (fpr_limit - x[-1]) / (fpr[n] - x[-1])
        x, y = np.append(x, fpr_limit), np.append(y, y_limit)
    area = np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1])) / 2
    return float(area / fpr_limit)


# ----------------------------------------------------------------------------------------------------------------
# Decisions: what the thresholds do (the metrics above are threshold-free)
# ----------------------------------------------------------------------------------------------------------------


def decision_metrics(predicted: ArrayLike, labels: ArrayLike) -> dict[str, float | int]:
    """Precision, recall, F1 and false-positive rate of boolean decisions against boolean labels, with the
    confusion matrix (``tp``, ``fp``, ``tn``, ``fn``). A ratio whose denominator is zero is NaN."""
    pred, truth = _to_numpy(predicted).astype(bool).ravel(), _to_numpy(labels).astype(bool).ravel()
    if pred.shape != truth.shape:
        raise ValueError(f"decisions shape {pred.shape} does not match labels shape {truth.shape}")
    tp, fp = int(np.sum(pred & truth)), int(np.sum(pred & ~truth))
    fn, tn = int(np.sum(~pred & truth)), int(np.sum(~pred & ~truth))

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return {
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "fpr": ratio(fp, fp + tn),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def mask_overlaps(
    predicted: ArrayLike, masks: ArrayLike, *, valid: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image IoU and F1 (Dice) of predicted masks against true masks (N, H, W), over ``valid`` pixels.

    An image whose predicted and true masks are both empty scores 1 on both (a good image judged good is perfect),
    as segmentation benchmarks count it.
    """
    pred, truth = _to_numpy(predicted).astype(bool), _to_numpy(masks).astype(bool)
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"expected two (N, H, W) arrays of the same shape, got {pred.shape} and {truth.shape}")
    content = _valid(valid, pred.shape)
    if content is not None:
        pred, truth = pred & content, truth & content
    tp = (pred & truth).sum(axis=(1, 2))
    union = (pred | truth).sum(axis=(1, 2))
    total = pred.sum(axis=(1, 2)) + truth.sum(axis=(1, 2))
    empty = union == 0
    iou = np.where(empty, 1.0, tp / np.maximum(union, 1))
    f1 = np.where(empty, 1.0, 2 * tp / np.maximum(total, 1))
    return iou, f1


def f1_max(scores: ArrayLike, labels: ArrayLike) -> float:
    """The best F1 over all thresholds (for reference: it is chosen on the labels themselves)."""
    s, y = _to_numpy(scores).ravel(), _to_numpy(labels).astype(bool).ravel()
    if _one_class(y, "F1-max"):
        return float("nan")
    precision, recall, _ = precision_recall_curve(y, s)
    return float(np.max(2 * precision * recall / np.maximum(precision + recall, 1e-12)))
