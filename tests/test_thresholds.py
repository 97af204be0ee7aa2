import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bgad.config import ThresholdConfig
from bgad.method.thresholds import (
    NormalTail,
    describe_operating_point,
    fit_thresholds,
    normalized_score,
    operating_point,
    threshold_for_fpr,
)


def _maps(peaks: list[float], size: int = 8) -> torch.Tensor:
    maps = torch.zeros(len(peaks), size, size)
    for i, peak in enumerate(peaks):
        maps[i, 2, 3] = peak
    return maps


def test_the_tail_is_the_empirical_share_in_the_body() -> None:
    """Below the tail's start the i-th highest of N scores has share i / (N + 1) (plotting positions)."""
    scores = np.random.default_rng(0).normal(size=200)
    tail = NormalTail(scores)
    ranked = np.sort(scores)[::-1]
    for i in range(25, 200, 17):  # the top 20 (10 %) are the exponential tail
        assert tail.share(ranked[i]) == pytest.approx((i + 1) / 201)
    assert tail.share(ranked[-1] - 1.0) == 1.0


def test_the_tail_beyond_the_top_is_the_fitted_exponential() -> None:
    """Above the (k+1)-th highest score u the share decays as exp(-(s - u) / mean excess), brute-force checked."""
    scores = np.random.default_rng(1).exponential(size=100)
    ranked = np.sort(scores)[::-1]
    k = 10
    u = ranked[k]
    scale = np.mean(ranked[:k] - u)
    tail = NormalTail(scores)
    for s in (u + 0.1, ranked[0], ranked[0] + 3.0):
        assert tail.share(s) == pytest.approx((k + 1) / 101 * math.exp(-(s - u) / scale))


@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=300), st.floats(1e-4, 0.95))
def test_score_at_inverts_share(values: list[float], share: float) -> None:
    scores = np.array(values)
    if np.ptp(scores) == 0:
        scores = scores + np.arange(len(scores))
    tail = NormalTail(scores)
    threshold = tail.score_at(share)
    if share < tail.share(scores.min()):
        assert tail.share(threshold) == pytest.approx(share, rel=1e-6)
    grid = np.linspace(scores.min() - 1, scores.max() + 10, 200)
    assert np.all(np.diff(tail.share(grid)) <= 1e-12)  # never increases with the score


@pytest.mark.parametrize("n", [30, 300, 5000])
def test_the_one_percent_threshold_of_exponential_scores_is_near_the_true_quantile(n: int) -> None:
    """Maxima of light-tailed maps have an exponential tail: the estimate of its 1 % point (ln 100 ≈ 4.6) is
    within its sampling error, from 30 scores (extrapolated) to 5,000 (mean over 200 draws for small N)."""
    rng = np.random.default_rng(n)
    draws = 200 if n < 5000 else 20
    estimates = [threshold_for_fpr(rng.exponential(size=n), 0.01) for _ in range(draws)]
    true = math.log(100)
    flagged = [math.exp(-t) for t in estimates]  # the true share above each estimated threshold
    assert abs(np.mean(flagged) - 0.01) < (0.006 if n == 30 else 0.002)
    assert abs(np.median(estimates) - true) < (0.5 if n == 30 else 0.15)


def test_normals_only_use_the_target_rate_and_the_pixel_quantile() -> None:
    normal = _maps([float(i) for i in range(1, 101)])
    thresholds = fit_thresholds(normal, None, None, ThresholdConfig(target_fpr=0.2, pixel_quantile=0.5))
    assert thresholds.image == pytest.approx(threshold_for_fpr(np.arange(1.0, 101.0), 0.2))
    assert thresholds.image == pytest.approx(80.8, abs=0.01)  # in the body: share (101 - 80.8) / 101 = 0.2
    assert thresholds.pixel == 0.0  # more than half of all pixels are 0


def test_known_anomalies_raise_the_image_threshold_within_the_sampling_error() -> None:
    """All known anomalies above the target's threshold: the midpoint, capped where the expected false-alarm rate
    falls below the target by more than its sampling error."""
    peaks = [float(i) for i in range(1, 101)]
    tail = NormalTail(np.array(peaks))
    masks = _maps([1.0]) > 0
    config = ThresholdConfig(target_fpr=0.1, pixel_quantile=1.0)
    base = tail.score_at(0.1)
    near = fit_thresholds(_maps(peaks), _maps([base + 2.0]), masks, config)
    assert near.image == pytest.approx(base + 1.0)  # the midpoint
    far = fit_thresholds(_maps(peaks), _maps([1000.0]), masks, config)
    assert far.image == pytest.approx(tail.score_at(0.1 - math.sqrt(0.1 * 0.9 / 100)))  # the cap
    assert tail.share(far.image) >= 0.1 - tail.sampling_error(0.1) - 1e-9
    plain = fit_thresholds(_maps(peaks), _maps([1000.0]), masks, ThresholdConfig(0.1, 1.0, refine_with_anomalies=False))
    assert plain.image == pytest.approx(base)


def test_the_cap_never_halves_the_target() -> None:
    """With 20 normals the sampling error of 1 % exceeds the target: the threshold still flags at least 0.5 %."""
    peaks = [float(i) for i in range(1, 21)]
    thresholds = fit_thresholds(_maps(peaks), _maps([1e6]), _maps([1.0]) > 0, ThresholdConfig(target_fpr=0.01))
    assert NormalTail(np.array(peaks)).share(thresholds.image) == pytest.approx(0.005)


def test_anomalies_scoring_below_the_threshold_leave_it() -> None:
    normal = _maps([1.0, 5.0])
    anomalies = _maps([2.0])
    masks = anomalies > 0
    config = ThresholdConfig(target_fpr=0.3, pixel_quantile=1.0)
    thresholds = fit_thresholds(normal, anomalies, masks, config)
    assert thresholds.image == pytest.approx(threshold_for_fpr(np.array([1.0, 5.0]), 0.3))
    assert thresholds.pixel == pytest.approx(5.0)  # the normals' quantile wins over the lower F1 threshold


def test_a_target_fpr_argument_overrides_the_config() -> None:
    normal = _maps([float(i) for i in range(1, 101)])
    thresholds = fit_thresholds(normal, None, None, ThresholdConfig(), target_fpr=0.3)
    assert thresholds.image == pytest.approx(threshold_for_fpr(np.arange(1.0, 101.0), 0.3))


def test_flagged_normals_count_for_the_pixel_threshold() -> None:
    """A normal image above the image threshold gets a mask: a hot spot on it (6) pushes the pixel threshold
    above it when that costs no more mask quality on the anomalies (5 and 7) than it saves on the normal."""
    anomalies = _maps([5.0, 7.0])
    masks = anomalies > 0
    config = ThresholdConfig(target_fpr=0.5, pixel_quantile=0.5, refine_with_anomalies=True)
    quiet = fit_thresholds(_maps([1.0, 2.0, 3.0]), anomalies, masks, config)
    hot = fit_thresholds(_maps([1.0, 2.0, 6.0]), anomalies, masks, config)
    assert quiet.image < 5.0
    assert hot.image < 6.0  # the hot normal is flagged
    assert quiet.pixel == pytest.approx(5.0)  # just below 5: both anomalies get exact masks
    assert hot.pixel == pytest.approx(7.0)  # just below 7: the flagged normal's mask stays empty


def test_the_normalized_score_is_half_at_the_threshold_and_grows_with_rarity() -> None:
    normals = np.random.default_rng(2).normal(size=500)
    threshold = threshold_for_fpr(normals, 0.01)
    grid = np.linspace(-5, 15, 400)
    normalized = normalized_score(grid, threshold, normals)
    assert normalized_score(threshold, threshold, normals) == pytest.approx(0.5)
    assert normalized_score(normals.min() - 1, threshold, normals) == 0.0
    assert np.all(np.diff(normalized) >= 0)
    assert 0.5 < normalized_score(threshold + 0.5, threshold, normals) < 1.0  # rarer, not yet saturated
    # 1 = as rare as the threshold's share squared: 1 good part in 10,000 for a 1 % threshold
    assert NormalTail(normals).share(grid[normalized >= 1.0][0]) == pytest.approx(1e-4, rel=0.05)


def test_the_normalized_score_without_normal_scores_is_the_verdict() -> None:
    assert normalized_score(np.array([1.0, 3.0]), 2.0, None).tolist() == [0.0, 1.0]


def test_the_operating_point_says_what_the_threshold_is_expected_to_do() -> None:
    normals = np.arange(1.0, 200.0)
    point = operating_point(threshold_for_fpr(normals, 0.01), normals, np.array([150.0, 250.0, 300.0]))
    assert point["expected_false_alarm_rate"] == pytest.approx(0.01)
    assert point["sampling_error"] == pytest.approx(math.sqrt(0.01 * 0.99 / 199))
    assert (point["known_anomalies"], point["known_anomalies_flagged"]) == (3, 2)
    text = describe_operating_point(point)
    assert text.startswith("expected to flag 1.0 % of good parts (± 0.7 %, from 199 out-of-sample normal scores)")
    assert text.endswith("flags 2 of 3 known anomalies (trained on)")
    assert "known" not in describe_operating_point(operating_point(150.0, normals, None))
