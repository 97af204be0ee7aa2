import numpy as np
import pytest
import torch

from bgad.config import ThresholdConfig
from bgad.thresholds import fit_thresholds


def _maps(peaks: list[float], size: int = 8) -> torch.Tensor:
    maps = torch.zeros(len(peaks), size, size)
    for i, peak in enumerate(peaks):
        maps[i, 2, 3] = peak
    return maps


def test_normals_only_use_the_quantiles() -> None:
    normal = _maps([float(i) for i in range(1, 101)])
    thresholds = fit_thresholds(normal, None, None, ThresholdConfig(image_quantile=0.9, pixel_quantile=0.5))
    assert thresholds.image == pytest.approx(np.quantile(np.arange(1, 101), 0.9))
    assert thresholds.pixel == 0.0  # more than half of all pixels are 0


def test_known_anomalies_move_the_image_threshold_to_the_midpoint() -> None:
    normal = _maps([1.0, 2.0, 3.0])
    anomalies = _maps([7.0, 9.0])
    masks = torch.zeros_like(anomalies, dtype=torch.bool)
    masks[:, 2, 3] = True
    config = ThresholdConfig(image_quantile=1.0, pixel_quantile=1.0)
    thresholds = fit_thresholds(normal, anomalies, masks, config)
    assert thresholds.image == pytest.approx((3.0 + 7.0) / 2)
    # the best-mask pixel threshold is just below their lowest defect value, 7 (above the normals' max 3)
    assert thresholds.pixel == pytest.approx(7.0)
    plain = fit_thresholds(normal, anomalies, masks, ThresholdConfig(1.0, 1.0, refine_with_anomalies=False))
    assert plain.image == pytest.approx(3.0)
    assert plain.pixel == pytest.approx(3.0)


def test_anomalies_scoring_below_normals_leave_the_image_threshold() -> None:
    normal = _maps([1.0, 5.0])
    anomalies = _maps([2.0])
    masks = torch.zeros_like(anomalies, dtype=torch.bool)
    masks[0, 2, 3] = True
    thresholds = fit_thresholds(normal, anomalies, masks, ThresholdConfig(image_quantile=1.0, pixel_quantile=1.0))
    assert thresholds.image == pytest.approx(5.0)
    assert thresholds.pixel == pytest.approx(5.0)  # the normals' quantile wins over the lower F1 threshold


def test_a_target_fpr_sets_the_image_threshold_and_is_not_moved_by_anomalies() -> None:
    normal, anomalies = _maps([float(i) for i in range(1, 101)]), _maps([200.0])
    masks = anomalies > 0
    thresholds = fit_thresholds(normal, anomalies, masks, ThresholdConfig(), target_fpr=0.1)
    assert thresholds.image == 90.0  # 10 of the 100 normals score above it


def test_flagged_normals_count_for_the_pixel_threshold() -> None:
    """A normal image above the image threshold gets a mask: a hot spot on it (6) pushes the pixel threshold
    above it when that costs no more mask quality on the anomalies (5 and 7) than it saves on the normal."""
    anomalies = _maps([5.0, 7.0])
    masks = anomalies > 0
    config = ThresholdConfig(image_quantile=0.5, pixel_quantile=0.5)
    quiet = fit_thresholds(_maps([1.0, 2.0, 3.0]), anomalies, masks, config)
    hot = fit_thresholds(_maps([1.0, 2.0, 6.0]), anomalies, masks, config)
    assert quiet.image == hot.image == 3.5  # midway between the normals' median and the lowest anomaly
    assert quiet.pixel == pytest.approx(5.0)  # just below 5: both anomalies get exact masks
    assert hot.pixel == pytest.approx(7.0)  # just below 7: the flagged normal's mask stays empty
