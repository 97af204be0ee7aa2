"""The inference path (``FeatureLevel.log_prob_map`` through :class:`bgad.method.flow.GridFlow`, cached) against the
general path that training uses (a row index per vector) and a naive per-position normalization written out here.

Weights are random and moved away from their init (``_perturb``: a non-linear clamp, different scales per channel),
and normalization statistics are fitted, so that every folded term matters.
"""

from __future__ import annotations

import copy

import pytest
import torch

from bgad.config import ModelConfig
from bgad.method.encoding import GridEncoding
from bgad.method.flow import ConditionalFlow
from bgad.method.level import FeatureLevel
from bgad.method.model import BGADModel
from bgad.method.scoring import anomaly_map, calibrate

from .test_flow import _perturb, _to_exact_double

RTOL = 1e-5  # float32: relative to the scale of the compared maps


def _assert_close_on_scale(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=rtol * float(expected.abs().max()))


def _naive_vectors(level: FeatureLevel, features: torch.Tensor) -> torch.Tensor:
    """The flow's inputs (B, P, C): each channel standardized, then each position whitened on its own."""
    x = features.flatten(2).transpose(1, 2)
    if level.normalization == "none":
        return x
    x = (x - level.channel_mean) / level.channel_std
    if level.normalization == "channel":
        return x
    whitened = [(x[:, p] - level.position_mean[p]) @ level.whitener[p].T for p in range(level.positions)]
    return torch.stack(whitened, dim=1)


def _reference_map(level: FeatureLevel, features: torch.Tensor) -> torch.Tensor:
    """Log-likelihood map (B, h, w) through training's path: every vector with its grid position as an index."""
    vectors = _naive_vectors(level, features)
    positions = torch.arange(level.positions).repeat(len(vectors))
    return level.log_prob(vectors.flatten(0, 1), positions).view(-1, *level.grid)


def _perturbed_level(channels: int, grid: tuple[int, int], normalization: str, n_blocks: int) -> FeatureLevel:
    level = FeatureLevel(
        channels, grid, normalization=normalization, condition_dim=16, n_blocks=n_blocks, clamp_alpha=1.9, seed=1
    )
    _perturb(level.flow, seed=2)
    scales = torch.linspace(0.5, 3.0, channels)[None, :, None, None]
    level.fit_normalization(scales * torch.randn(24, channels, *grid, generator=torch.Generator().manual_seed(3)))
    return level


@pytest.mark.parametrize(
    ("channels", "grid", "normalization", "n_blocks", "batch"),
    [
        (5, (3, 4), "position", 1, 1),
        (6, (4, 4), "channel", 3, 2),
        (7, (2, 5), "none", 8, 3),
        (24, (8, 8), "position", 2, 1),
        (5, (3, 5), "position", 2, 40),
    ],
)
def test_level_map_equals_the_training_path(channels, grid, normalization, n_blocks, batch) -> None:
    level = _perturbed_level(channels, grid, normalization, n_blocks)
    features = 2.0 * torch.randn(batch, channels, *grid, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        actual, expected = level.log_prob_map(features), _reference_map(level, features)
    assert actual.shape == (batch, *grid)
    assert expected.std() > 0.1  # a non-trivial map
    _assert_close_on_scale(actual, expected)


@pytest.mark.parametrize("channels", [3, 7, 24])
@pytest.mark.parametrize("n_blocks", [1, 4])
def test_grid_flow_is_the_flow_in_float64(channels, n_blocks) -> None:
    """Folding the condition, the output scale, the global affine and tanh into sigmoid is exact algebra, and so is
    skipping the last rotation with an exactly orthogonal one (a float32 rotation is orthogonal to ~1e-7)."""
    flow = _perturb(_to_exact_double(ConditionalFlow(channels, condition_dim=16, n_blocks=n_blocks, seed=5)), seed=6)
    grid = GridEncoding(*(t.double() for t in GridEncoding.create(16, 3, 4)))
    x = 1.5 * torch.randn(2, 12, channels, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(flow.grid_flow(grid).log_prob(x), flow.log_prob(x, grid), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(image_size=64),  # the default levels, strides 8 and 16, 8 blocks, per-position whitening
        ModelConfig(image_size=64, strides=(4,), n_coupling_blocks=2, condition_dim=16, normalization="channel"),
        ModelConfig(image_size=96, strides=(4, 16), n_coupling_blocks=3, condition_dim=32, clamp_alpha=1.0),
        ModelConfig(image_size=96, strides=(8, 16, 32), n_coupling_blocks=2, condition_dim=16),
    ],
    ids=["default", "stride-4-channel", "strides-4-16", "strides-8-16-32"],
)
def test_model_maps_equal_the_reference(config: ModelConfig) -> None:
    model = BGADModel(config).eval()
    generator = torch.Generator().manual_seed(8)
    images = torch.rand(6, 3, config.image_size, config.image_size, generator=generator)
    with torch.inference_mode():
        features = model.extractor(images)
        model.fit_normalization(features)
        for index, level in enumerate(model.levels):
            _perturb(level.flow, seed=9 + index)
        expected = [_reference_map(level, f) for level, f in zip(model.levels, features, strict=True)]
        size = (config.image_size, config.image_size)
        level_max, normal_max = calibrate(expected, size, None, config.score_temperature)
        for level, value in zip(model.levels, level_max, strict=True):
            level.log_prob_max.copy_(value)
        model.normal_max.copy_(normal_max)
        for actual, reference in zip(model.level_log_probs(features), expected, strict=True):
            _assert_close_on_scale(actual, reference)
        reference_maps = anomaly_map(expected, level_max, normal_max, size, config.score_temperature)
        _assert_close_on_scale(model(images), reference_maps)


def test_the_cached_grid_flow_follows_every_change_of_the_weights() -> None:
    level = _perturbed_level(6, (3, 3), "position", 2)
    features = torch.randn(2, 6, 3, 3, generator=torch.Generator().manual_seed(10))

    def check() -> None:
        x = features.to(level.channel_mean.dtype)
        with torch.inference_mode():
            _assert_close_on_scale(level.log_prob_map(x), _reference_map(level, x))

    keys = set(level.state_dict())
    check()
    with torch.inference_mode():
        first = level.grid_flow()
        assert level.grid_flow() is first  # kept while nothing changes
    assert set(level.state_dict()) == keys  # and never saved with the model
    assert copy.deepcopy(level)._grid_flow_cache is None
    with torch.no_grad():  # an in-place change, as an optimizer step makes
        level.flow.blocks[1].subnet[0].bias.add_(0.5)
    check()
    other = _perturbed_level(6, (3, 3), "position", 2)
    _perturb(other.flow, seed=11)
    level.load_state_dict(other.state_dict())
    check()
    level.flow.blocks[0].global_offset = torch.nn.Parameter(torch.full((6,), 0.3))  # a new tensor
    check()
    level.double()  # new storage for every tensor
    check()


def test_gradients_through_the_map_are_the_training_paths() -> None:
    """With gradients on, the grid flow is built from the weights at each call, so that gradients reach them."""
    level = _perturbed_level(5, (2, 3), "position", 2).double()
    _to_exact_double(level.flow)
    features = torch.randn(2, 5, 2, 3, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    gradients = []
    for log_prob_map in (level.log_prob_map, lambda f: _reference_map(level, f)):
        level.zero_grad(set_to_none=True)
        log_prob_map(features).square().sum().backward()
        gradients.append([p.grad for p in level.parameters()])
    assert all(g.abs().sum() > 0 for g in gradients[0])
    for actual, expected in zip(*gradients, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9)
