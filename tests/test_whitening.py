import math

import numpy as np
import pytest
import torch
from sklearn.covariance import ledoit_wolf as sklearn_ledoit_wolf

from bgad.method.level import FeatureLevel
from bgad.method.whitening import VARIANCE_FLOOR, fit_whitening, ledoit_wolf, whiten


def _vectors(n: int = 40, positions: int = 3, channels: int = 6, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(positions, channels, channels, generator=generator)
    return torch.einsum("pcd,npd->npc", mixing, torch.randn(n, positions, channels, generator=generator)) + 3


def test_ledoit_wolf_matches_scikit_learn_at_every_position() -> None:
    vectors = _vectors()
    ours = ledoit_wolf(vectors)
    for p in range(vectors.shape[1]):
        expected, _ = sklearn_ledoit_wolf(vectors[:, p].double().numpy())
        np.testing.assert_allclose(ours[p].numpy(), expected, rtol=1e-9, atol=1e-9)


def test_whitening_gives_identity_covariance_under_the_fitted_gaussian() -> None:
    vectors = _vectors(positions=70)  # more than one chunk of positions
    mean, whitener = fit_whitening(vectors)
    covariance = ledoit_wolf(vectors) + VARIANCE_FLOOR * torch.eye(vectors.shape[-1], dtype=torch.float64)
    product = whitener.double() @ covariance @ whitener.double().transpose(1, 2)
    torch.testing.assert_close(product, torch.eye(6, dtype=torch.float64).expand_as(product), rtol=0, atol=1e-4)
    torch.testing.assert_close(mean, vectors.mean(dim=0), rtol=0, atol=1e-5)
    assert torch.equal(whitener, whitener.tril()), "whiteners are lower triangular"


def test_a_position_that_never_varies_stays_finite() -> None:
    vectors = _vectors()
    vectors[:, 1] = 0.5  # e.g. a black background in every training image
    mean, whitener = fit_whitening(vectors)
    assert torch.isfinite(whitener).all()
    z = whiten(torch.full((1, 3, 6), 0.6), mean, whitener)
    assert torch.isfinite(z).all()
    assert float(z[0, 1].abs().max()) == pytest.approx(0.1 / math.sqrt(VARIANCE_FLOOR), rel=1e-4)


def test_an_identity_flow_on_whitened_features_scores_the_per_position_gaussian() -> None:
    """With ``normalization="position"`` the model starts as a per-position Gaussian: an identity flow gives
    ``ℓ = -d² / (2C) - log √(2π)``, d the Mahalanobis distance under that position's covariance."""
    torch.manual_seed(0)
    features = torch.randn(30, 4, 2, 3) * torch.tensor([1.0, 2.0, 0.5, 3.0])[:, None, None]
    level = FeatureLevel(4, (2, 3), normalization="position", condition_dim=8, n_blocks=2, clamp_alpha=1.9, seed=0)
    level.fit_normalization(features)
    with torch.no_grad():
        for block in level.flow.blocks:  # coupling outputs zero: each block is a rotation, which keeps |z|
            block.subnet[2].weight.zero_()
            block.subnet[2].bias.zero_()
    test = torch.randn(5, 4, 2, 3)
    log_prob = level.log_prob_map(test).detach()

    standardized = lambda f: (f - level.channel_mean[:, None, None]) / level.channel_std[:, None, None]  # noqa: E731
    train = standardized(features).flatten(2).transpose(1, 2).double()
    covariance = ledoit_wolf(train) + VARIANCE_FLOOR * torch.eye(4, dtype=torch.float64)
    diff = standardized(test).flatten(2).transpose(1, 2).double() - train.mean(dim=0)
    squared = torch.einsum("bpc,pcd,bpd->bp", diff, torch.linalg.inv(covariance), diff)
    expected = (-squared / 8 - 0.5 * math.log(2 * math.pi)).view(5, 2, 3)
    torch.testing.assert_close(log_prob.double(), expected, rtol=0, atol=1e-4)
