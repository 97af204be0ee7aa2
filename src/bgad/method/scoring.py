"""From per-level log-likelihood maps to anomaly maps (reference §5), calibrated on normal images only.

Per level, ``exp((ℓ - max_l) / T)`` is a normality map in (0, ~1] (T, the score temperature, is 1 in the
reference); maps are upsampled bilinearly and summed over levels. The reference's anomaly map is
``normal_max - sum``, which is bounded: every clear defect scores about the number of levels and thresholds sit on a
saturated scale. bgad's is ``T log(normal_max / sum)``, a strictly increasing function of the reference's map
(every ranking, so AUROC and AUPRO, is the same) that does not saturate: with one level it is ``max_l - ℓ``, the
per-dimension negative log-likelihood above the most normal calibration vector, in nats. The reference takes
``max_l`` and ``normal_max`` from the test set, so an image's score depends on which other images are scored with
it; here both come from the calibration normals and are stored with the model. Higher scores mean more anomalous.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# exp(-80) ≈ 1.8e-35 is a normal float32: scores saturate only where ℓ - max_l < -80 T at every level in reach.
LOG_NORMALITY_FLOOR = -80.0


def normality_map(
    level_log_probs: list[Tensor], level_max: Tensor, size: tuple[int, int], temperature: float
) -> Tensor:
    """Sum over levels of the upsampled ``exp((ℓ - max_l) / T)``: (B, h_l, w_l) per level -> (B, *size).

    The exponent is floored at :data:`LOG_NORMALITY_FLOOR` so that the sum never underflows to 0 in float32."""
    total = None
    for log_prob, offset in zip(level_log_probs, level_max, strict=True):
        normality = torch.exp(((log_prob - offset) / temperature).clamp_min(LOG_NORMALITY_FLOOR))
        # squeeze, not [:, 0]: the same values, and no Gather (a copy) in the exported graph
        up = F.interpolate(normality[:, None], size=size, mode="bilinear", align_corners=True).squeeze(1)
        total = up if total is None else total + up
    return total


def anomaly_map(
    level_log_probs: list[Tensor],
    level_max: Tensor,
    normal_max: Tensor,
    size: tuple[int, int],
    temperature: float,
) -> Tensor:
    """The anomaly map (B, *size): ``T log(normal_max / normality)``; higher means more anomalous, 0 is the most
    normal calibration pixel."""
    normality = normality_map(level_log_probs, level_max, size, temperature)
    return temperature * (torch.log(normal_max) - torch.log(normality))


def image_scores(anomaly_maps: Tensor, valid: Tensor | None = None) -> Tensor:
    """Image score = maximum of its anomaly map, as in the reference; over the ``valid`` (B, S, S) pixels only
    when given (the content of letterboxed images)."""
    if valid is not None:
        anomaly_maps = anomaly_maps.masked_fill(~valid, -torch.inf)
    return anomaly_maps.flatten(1).amax(dim=1)


def calibrate(
    level_log_probs: list[Tensor], size: tuple[int, int], valid: Tensor | None, temperature: float
) -> tuple[Tensor, Tensor]:
    """Constants ``(level_max, normal_max)`` from the level maps of the training normal images; with ``valid``
    (N, *size), from content pixels and the feature cells that cover some content only."""
    level_max = torch.stack([_masked_max(lp, _cells(valid, lp.shape[-2:])) for lp in level_log_probs])
    normal_max = _masked_max(normality_map(level_log_probs, level_max, size, temperature), valid)
    return level_max, normal_max


def _cells(valid: Tensor | None, shape: tuple[int, int]) -> Tensor | None:
    """The cells of an (h, w) grid that cover at least one valid pixel."""
    return None if valid is None else F.adaptive_max_pool2d(valid[:, None].float(), shape)[:, 0] > 0


def _masked_max(values: Tensor, valid: Tensor | None) -> Tensor:
    return values.max() if valid is None else values[valid].max()


def resize_maps(anomaly_maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (B, H, W) maps, e.g. back to an image's original resolution."""
    return F.interpolate(anomaly_maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
