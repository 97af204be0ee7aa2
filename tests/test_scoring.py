"""The anomaly map: the reference's combination of levels, on a scale that does not saturate."""

import torch

from bgad.method.scoring import LOG_NORMALITY_FLOOR, anomaly_map, calibrate, image_scores, normality_map


def _levels(seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 8, 8, generator=generator) * 3 - 2, torch.randn(3, 4, 4, generator=generator) * 3 - 2]


def test_the_map_is_an_increasing_function_of_the_references() -> None:
    """T log(normal_max / normality) ranks every pixel as normal_max - normality (the reference's map) does."""
    levels = _levels(0)
    level_max, normal_max = calibrate(_levels(1), (16, 16), None, 2.0)
    ours = anomaly_map(levels, level_max, normal_max, (16, 16), 2.0).flatten()
    reference = (normal_max - normality_map(levels, level_max, (16, 16), 2.0)).flatten()
    order = torch.argsort(reference)
    assert (torch.diff(ours[order]) >= -1e-4).all()
    torch.testing.assert_close(ours, 2.0 * torch.log(normal_max / (normal_max - reference)), rtol=1e-4, atol=1e-4)
    far = [level - 60 for level in levels]  # clear defects: the reference saturates at normal_max, ours does not
    saturated = (normal_max - normality_map(far, level_max, (16, 16), 2.0)).flatten()
    assert torch.unique(saturated).numel() == 1
    assert torch.unique(anomaly_map(far, level_max, normal_max, (16, 16), 2.0)).numel() > 100


def test_one_level_scores_the_negative_log_likelihood_above_its_maximum() -> None:
    log_prob = torch.tensor([[[-1.0, -3.0], [-30.0, -100.0]]])
    level_max = torch.tensor([-1.0])
    maps = anomaly_map([log_prob], level_max, torch.tensor(1.0), (2, 2), 2.0)
    torch.testing.assert_close(maps, -1.0 - log_prob)  # no saturation: -100 scores 99, -30 scores 29


def test_the_calibration_normals_score_zero_at_least_and_defects_do_not_saturate() -> None:
    normals = _levels(2)
    level_max, normal_max = calibrate(normals, (16, 16), None, 2.0)
    assert anomaly_map(normals, level_max, normal_max, (16, 16), 2.0).min() >= -1e-5
    far = [level - 1e4 for level in normals]  # far beyond float32's exp: floored, finite
    scores = image_scores(anomaly_map(far, level_max, normal_max, (16, 16), 2.0))
    assert torch.isfinite(scores).all()
    assert (scores > -LOG_NORMALITY_FLOOR).all()  # beyond the floor: about 2 x 80 nats, far above any normal
