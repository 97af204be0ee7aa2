"""Decision thresholds and what a score means, from out-of-sample normal scores (never from the test set).

The normals' scores come from cross-fitting (:mod:`bgad.method.crossfit`) or, after ``bgad calibrate``, from good images
the model never saw: they are distributed as a new good part's score. :class:`NormalTail` estimates from them the
share of good parts that score at least as high as a given score (an empirical survival function with an
exponential tail beyond the top scores, so that it works with 30 normals and with 5,000); the image threshold is
the score whose share is ``threshold.target_fpr``. The known anomalies, when they all score above it, may raise it
towards them, but never so far that the expected false-alarm rate leaves the target by more than its sampling
error.

Masks follow the verdict: an image judged good gets an empty mask, so the pixel threshold only has to separate
defect pixels from normal ones on flagged images. It is the one that makes the best masks (mean per-image F1) on
the known anomalies and the flagged normals, never lower than the normals' pixel quantile.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..config import ThresholdConfig
from ..errors import BGADError
from ..metrics import mask_overlaps
from .scoring import image_scores
from .tiling import image_max

_PIXEL_CANDIDATES = 128  # pixel thresholds tried: quantiles of the known anomalies' defect-pixel values
_MIN_TAIL = 10  # the exponential tail is fitted to the top max(_MIN_TAIL, _TAIL_SHARE x N) normal scores
_TAIL_SHARE = 0.1


class Thresholds(NamedTuple):
    image: float  # an image is anomalous when its score is above this
    pixel: float  # a pixel of an anomalous image belongs to the defect mask when its map value is above this


class NormalTail:
    """The share of good parts scoring at least ``s``, estimated from out-of-sample normal scores.

    Up to the top ``k`` scores it is the empirical survival function with plotting positions (the i-th highest of
    N scores has share i / (N + 1)), log-linearly interpolated; above, an exponential tail fitted to the top ``k``
    excesses (the peaks-over-threshold model for maxima of light-tailed maps), so that shares below 1 / (N + 1)
    can be estimated at all: "1 in 10,000" from 200 images is an extrapolation, and says so in the docs.

    >>> tail = NormalTail(np.arange(1.0, 100.0))
    >>> round(tail.share(50.0), 3), round(tail.score_at(0.5), 3)
    (0.5, 50.0)
    >>> bool(tail.share(200.0) < 1e-3)
    True
    """

    def __init__(self, normal_scores: np.ndarray):
        scores = np.sort(np.asarray(normal_scores, dtype=np.float64))
        if len(scores) == 0 or not np.isfinite(scores).all():
            raise BGADError("normal scores must be a non-empty array of finite numbers")
        n = len(scores)
        self.n = n
        self._scores = scores
        self._log_shares = np.log(np.arange(n, 0, -1) / (n + 1))  # share of the i-th lowest: (N - i + 1) / (N + 1)
        k = min(max(_MIN_TAIL, math.ceil(_TAIL_SHARE * n)), n - 1)
        self._start = n - 1 - k  # index of the tail's start u
        excess = scores[self._start + 1 :] - scores[self._start]
        spread = float(scores[-1] - scores[0])
        self._scale = max(float(excess.mean()) if k else 0.0, 1e-6 * spread, 1e-12)

    def share(self, score: float | np.ndarray) -> float | np.ndarray:
        """The estimated share of good parts scoring ``score`` or higher, in (0, 1]."""
        s = np.asarray(score, dtype=np.float64)
        u, log_u = self._scores[self._start], self._log_shares[self._start]
        body = np.interp(s, self._scores[: self._start + 1], self._log_shares[: self._start + 1], left=0.0)
        tail = log_u - (s - u) / self._scale
        out = np.exp(np.where(s > u, tail, body))
        return out if out.ndim else float(out)

    def score_at(self, share: float) -> float:
        """The score that this share of good parts reaches or exceeds (the inverse of :meth:`share`)."""
        if not 0 < share < 1:
            raise BGADError(f"the target false-positive rate must be in (0, 1), got {share}")
        u, log_u = self._scores[self._start], self._log_shares[self._start]
        log_share = math.log(share)
        if log_share <= log_u:
            return float(u + self._scale * (log_u - log_share))
        body = self._log_shares[: self._start + 1]
        return float(np.interp(log_share, body[::-1], self._scores[: self._start + 1][::-1]))

    def table(self) -> dict[str, list[float] | float]:
        """What :meth:`share` needs, as JSON: the body's scores and log-shares (the last pair starts the tail) and
        the tail's scale; ``bgad serve``'s page computes normalized scores at any threshold from it."""
        body = slice(0, self._start + 1)
        return {
            "scores": self._scores[body].tolist(),
            "log_shares": self._log_shares[body].tolist(),
            "scale": self._scale,
        }

    def sampling_error(self, share: float) -> float:
        """The binomial standard error of a share estimated from these N scores."""
        return math.sqrt(share * (1 - share) / self.n)


def normalized_score(
    score: float | np.ndarray, threshold: float, normal_scores: np.ndarray | NormalTail | None
) -> float | np.ndarray:
    """A score mapped to [0, 1] by how rare it is among good parts, with the image threshold at 0.5:
    ``log(share(score)) / (2 log(share(threshold)))``, clipped, where ``share`` is :meth:`NormalTail.share`.

    0 is a score every good part reaches, 0.5 the threshold, and 1 a score as rare as the threshold's share
    squared (with a 1 % threshold: 1 good part in 10,000); anomalib's ``pred_score`` convention (above 0.5 is
    anomalous). Without normal scores, or with a threshold below every normal score, the verdict alone (0 or 1).
    ``normal_scores`` may be their :class:`NormalTail` already, for many calls.

    >>> normals = np.arange(1.0, 100.0)
    >>> normalized_score(np.array([0.0, 99.0]), threshold=99.0, normal_scores=normals)
    array([0. , 0.5])
    """
    scores = np.asarray(score, dtype=np.float64)
    tail = (
        normal_scores if normal_scores is None or isinstance(normal_scores, NormalTail) else NormalTail(normal_scores)
    )
    at_threshold = 1.0 if tail is None else tail.share(threshold)
    if at_threshold >= 1.0:
        out = (scores > threshold).astype(np.float64)
    else:
        out = np.clip(np.log(tail.share(scores)) / (2 * math.log(at_threshold)), 0.0, 1.0) + 0.0  # no -0.0
    return out if out.ndim else float(out)


def threshold_for_fpr(normal_scores: np.ndarray, fpr: float) -> float:
    """The image threshold expected to flag a share ``fpr`` of good parts, from out-of-sample ``normal_scores``
    (:class:`NormalTail`).

    >>> round(threshold_for_fpr(np.arange(1.0, 100.0), 0.2), 3)  # 20 of 99 scores, plotting position 20 / 100
    80.0
    """
    return NormalTail(normal_scores).score_at(fpr)


def operating_point(
    image_threshold: float, normal_scores: np.ndarray, known_scores: np.ndarray | None
) -> dict[str, float | int]:
    """What an image threshold is expected to do, from the scores the model was calibrated on: the share of good
    parts it flags (out of sample, with its sampling error) and how many of the known anomalies it flags (they
    were trained on, so this recall is optimistic)."""
    tail = NormalTail(normal_scores)
    rate = tail.share(image_threshold)
    known = np.zeros(0) if known_scores is None else np.asarray(known_scores)
    return {
        "expected_false_alarm_rate": rate,
        "sampling_error": tail.sampling_error(rate),
        "calibration_normals": tail.n,
        "known_anomalies": len(known),
        "known_anomalies_flagged": int((known > image_threshold).sum()),
    }


def describe_operating_point(point: dict[str, float | int]) -> str:
    """:func:`operating_point` in one sentence, as ``bgad fit`` prints it and the report shows it."""
    rate, error = 100 * point["expected_false_alarm_rate"], 100 * point["sampling_error"]
    text = (
        f"expected to flag {rate:.1f} % of good parts (± {error:.1f} %, from {point['calibration_normals']} "
        "out-of-sample normal scores)"
    )
    if point["known_anomalies"]:
        text += f"; flags {point['known_anomalies_flagged']} of {point['known_anomalies']} known anomalies (trained on)"
    return text


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
    """Thresholds from out-of-sample anomaly maps (N, S, S) of normal images and, optionally, of known anomalies
    + masks.

    Image: the score expected to flag ``target_fpr`` (default ``config.target_fpr``) of good parts
    (:func:`threshold_for_fpr`); if every known anomaly scores above it, the midpoint between it and the lowest
    known-anomaly score, capped where the expected rate would fall below the target by more than its sampling error
    (and never below half the target). Pixel: the ``pixel_quantile`` of the normals' pixels; with known anomalies,
    the threshold giving the best mean per-image mask F1 on them and on the flagged normals if that is higher.
    ``normal_valid`` and ``anomaly_valid`` (bool, shaped as the maps) restrict everything to those pixels. With a
    tiled model the maps are tiles' and ``*_owner`` give each tile's image: image scores are maxima over an
    image's tiles, and a tile of a flagged image gets a mask (mask F1 is then per tile).
    """
    normal_scores = image_max(image_scores(normal_maps, normal_valid).numpy(), normal_owner)
    tail = NormalTail(normal_scores)
    fpr = config.target_fpr if target_fpr is None else target_fpr
    image = tail.score_at(fpr)
    pixel = float(np.quantile(_pixels(normal_maps, normal_valid), config.pixel_quantile))
    if anomaly_maps is None or len(anomaly_maps) == 0 or not config.refine_with_anomalies:
        return Thresholds(image, pixel)
    anomaly_scores = image_max(image_scores(anomaly_maps, anomaly_valid).numpy(), anomaly_owner)
    if anomaly_scores.min() > image:
        highest = tail.score_at(max(fpr - tail.sampling_error(fpr), fpr / 2))
        image = min((image + float(anomaly_scores.min())) / 2, highest)
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
    image threshold expected to flag ``target_fpr`` of good parts, from the stored out-of-sample ``normal_scores``
    (:func:`threshold_for_fpr`); what is not given stays as ``thresholds``."""
    if image is not None and target_fpr is not None:
        raise BGADError("give an image threshold or a target false-positive rate, not both")
    if target_fpr is not None:
        if normal_scores is None:
            raise BGADError("this model stores no normal scores: run `bgad calibrate` first")
        image = threshold_for_fpr(normal_scores, target_fpr)
    for name, value in (("image", image), ("pixel", pixel)):
        if value is not None and not np.isfinite(value):
            raise BGADError(f"the {name} threshold must be a finite number, got {value}")
    return Thresholds(thresholds.image if image is None else image, thresholds.pixel if pixel is None else pixel)
