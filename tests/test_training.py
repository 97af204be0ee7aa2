import itertools

import pytest
import torch

from bgad.config import TrainConfig
from bgad.method.training import (
    _epoch_rows,
    _meta_epoch_plan,
    _with_synthetic,
    learning_rate,
    level_data,
    vector_labels,
)


def test_cosine_schedule_matches_reference_values() -> None:
    config = TrainConfig(meta_epochs=25, warmup_meta_epochs=2, lr=2e-4, lr_min_ratio=1e-3)
    assert learning_rate(config, 2, 0, 10) == pytest.approx(1.9686e-4, rel=1e-4)
    assert learning_rate(config, 12, 0, 10) == pytest.approx(1.064e-4, rel=1e-3)
    assert learning_rate(config, 24, 0, 10) == pytest.approx(9.88e-7, rel=1e-2)


def test_warmup_starts_at_a_tenth_and_never_overshoots() -> None:
    config = TrainConfig(meta_epochs=25, warmup_meta_epochs=2)
    assert learning_rate(config, 0, 0, 50) == pytest.approx(2e-5)
    # Meta-epochs may have different step counts (phase 1 sees fewer images): progress stays monotone.
    rates = [learning_rate(config, 0, s, 30) for s in range(30)] + [learning_rate(config, 1, s, 70) for s in range(70)]
    assert all(b > a for a, b in itertools.pairwise(rates))
    assert max(rates) < learning_rate(config, 2, 0, 70)
    assert learning_rate(config, 1, 69, 70) == pytest.approx(learning_rate(config, 2, 0, 70), rel=0.02)


def test_any_defect_labelling_keeps_a_one_pixel_defect_at_every_level() -> None:
    mask = torch.zeros(256, 256, dtype=torch.bool)
    mask[130, 131] = True  # not the top-left pixel of any 4x4, 8x8 or 16x16 cell
    for shape in [(64, 64), (32, 32), (16, 16)]:
        labels = vector_labels([None, mask], shape)
        assert not labels[0].any()
        assert labels[1].sum() == 1
        stride = 256 // shape[0]
        assert labels[1, 130 // stride, 131 // stride]
        # the reference's nearest sampling (top-left pixel of each cell) would lose it:
        nearest = torch.nn.functional.interpolate(mask[None, None].float(), size=shape, mode="nearest")
        assert not nearest.any()


def test_meta_epoch_plan_uses_every_vector_and_repeats_anomalies() -> None:
    labels = torch.zeros(5, 4, 4, dtype=torch.bool)
    labels[4, 1, 1] = True
    level = level_data(torch.randn(5 * 16, 3), labels, n_normal_images=4)
    config = TrainConfig(fiber_batch=16, anomaly_repeats=3, sub_epochs=2)
    generator = torch.Generator().manual_seed(0)
    plan = _meta_epoch_plan([level], config, True, generator)
    rows = torch.cat([r for _, r in plan])
    assert len(rows) == 2 * (64 + 3 * 16)
    assert (torch.bincount(rows, minlength=80)[64:] == 6).all()
    normal_only = torch.cat([r for _, r in _meta_epoch_plan([level], config, False, generator)])
    assert normal_only.max() < 64
    assert len(normal_only) == 128


def test_synthetic_rows_are_used_once_and_known_anomalies_repeated() -> None:
    labels = torch.zeros(3, 2, 2, dtype=torch.bool)
    labels[2] = True
    level = level_data(torch.randn(12, 3), labels, n_normal_images=2)  # 8 normal rows, 4 known-anomaly rows
    synthetic = level_data(torch.randn(8, 3), torch.ones(2, 2, 2, dtype=torch.bool), n_normal_images=0)
    merged = _with_synthetic(level, synthetic)
    assert merged.n_synthetic == 8
    assert merged.anomalous[8:].all()
    rows = _epoch_rows(merged, True, 5)
    counts = torch.bincount(rows, minlength=20)
    assert (counts[:8] == 1).all()
    assert (counts[8:12] == 5).all()
    assert (counts[12:] == 1).all()
