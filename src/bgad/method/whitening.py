"""Per-position whitening of feature maps: a Gaussian of the normal features at every position, as the flows' base.

For each position p of a level's grid, the normal training vectors get a mean ``μ_p`` and a covariance ``Σ_p``
(Ledoit-Wolf shrinkage towards a scaled identity: a well-conditioned estimate from a few hundred images, with no
tuning constant), and the flow sees ``z = L_p⁻¹ (x - μ_p)`` with ``Σ_p = L_p L_pᵀ``. An identity flow then scores
``-½‖z‖²/C``: the per-position Gaussian (PaDiM's model). The flow starts there and learns what a Gaussian cannot
(non-Gaussian shape, the known anomalies); see docs/method.md for why this base is needed.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Added to every covariance, in units of a channel's variance over all positions (features are standardized per
# channel first): keeps positions where the training images never vary (a black background) invertible.
VARIANCE_FLOOR = 0.01
_POSITIONS_PER_CHUNK = 64  # bounds the float64 working memory to N x 64 x C values


def ledoit_wolf(vectors: Tensor) -> Tensor:
    """Ledoit-Wolf covariances (P, C, C) of vectors (N, P, C): one per position, shrunk towards ``μ_p I``.

    The shrinkage is the closed form of Ledoit & Wolf (2004), as ``sklearn.covariance.ledoit_wolf`` (maximum-
    likelihood covariance, divided by N); a position whose vectors are all equal gets the identity's shape.
    """
    n, _, c = vectors.shape
    x = vectors.double()
    x = (x - x.mean(dim=0)).transpose(0, 1)  # (P, N, C)
    sample = x.transpose(1, 2) @ x / n
    mu = torch.diagonal(sample, dim1=1, dim2=2).sum(-1) / c
    eye = torch.eye(c, dtype=x.dtype)
    delta = (sample - mu[:, None, None] * eye).square().sum(dim=(1, 2)) / c
    beta = (x.square().sum(-1).square().sum(-1) / n - sample.square().sum(dim=(1, 2))) / (n * c)
    shrinkage = torch.where(delta > 0, torch.minimum(beta, delta) / delta.clamp_min(1e-300), torch.ones_like(delta))
    shrinkage = shrinkage[:, None, None]
    return shrinkage * mu[:, None, None] * eye + (1 - shrinkage) * sample


def fit_whitening(vectors: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (P, C) and whitening matrix (P, C, C), lower triangular, from normal vectors (N, P, C).

    ``whiten(x) = W_p (x - μ_p)`` has identity covariance under each position's regularized Gaussian.
    """
    means, whiteners = [], []
    for chunk in vectors.split(_POSITIONS_PER_CHUNK, dim=1):
        covariance = ledoit_wolf(chunk)
        covariance += VARIANCE_FLOOR * torch.eye(chunk.shape[-1], dtype=covariance.dtype)
        cholesky = torch.linalg.cholesky(covariance)
        eye = torch.eye(chunk.shape[-1], dtype=cholesky.dtype).expand_as(cholesky)
        whiteners.append(torch.linalg.solve_triangular(cholesky, eye, upper=False).float())
        means.append(chunk.double().mean(dim=0).float())
    return torch.cat(means), torch.cat(whiteners)


def whiten(vectors: Tensor, mean: Tensor, whitener: Tensor) -> Tensor:
    """``W_p (x - μ_p)`` for vectors (B, P, C) with every position of the grid, in order."""
    return torch.einsum("pcd,bpd->bpc", whitener, vectors - mean)
