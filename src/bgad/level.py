"""One feature level of the model: how its backbone features are normalized, its positional condition and its flow.

A :class:`FeatureLevel` is the only place where a level's vectors are made and scored: training, calibration,
inference, ``bgad speed`` and the benchmarks all go through :meth:`FeatureLevel.vectors` and
:meth:`FeatureLevel.log_prob`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import Normalization
from .encoding import GridEncoding
from .flow import ConditionalFlow
from .whitening import fit_whitening, whiten

_CHUNK = 65536  # vectors per flow call when scoring many (bounds the activations' memory)


class FeatureLevel(nn.Module):
    """Normalization, positional condition and conditional flow of one backbone level with an (h, w) grid.

    ``normalization`` (see :class:`bgad.config.ModelConfig`): ``"position"`` standardizes each channel, then
    whitens every position with its own Gaussian (:mod:`bgad.whitening`); ``"channel"`` only standardizes
    channels; ``"none"`` feeds the raw features. Statistics come from :meth:`fit_normalization` (normal images).
    """

    def __init__(
        self,
        channels: int,
        grid: tuple[int, int],
        *,
        normalization: Normalization,
        condition_dim: int,
        n_blocks: int,
        clamp_alpha: float,
        seed: int,
    ):
        super().__init__()
        self.channels, self.grid, self.normalization = channels, grid, normalization
        self.flow = ConditionalFlow(
            channels, condition_dim=condition_dim, n_blocks=n_blocks, clamp_alpha=clamp_alpha, seed=seed
        )
        encoding = GridEncoding.create(condition_dim, *grid)
        self.register_buffer("condition_columns", encoding.columns, persistent=False)
        self.register_buffer("condition_rows", encoding.rows, persistent=False)
        self.register_buffer("channel_mean", torch.zeros(channels))
        self.register_buffer("channel_std", torch.ones(channels))
        if normalization == "position":
            positions = grid[0] * grid[1]
            self.register_buffer("position_mean", torch.zeros(positions, channels))
            self.register_buffer("whitener", torch.eye(channels).repeat(positions, 1, 1))
        # Calibration (bgad.scoring): the largest log-likelihood of the training normals at this level.
        self.register_buffer("log_prob_max", torch.zeros(()))

    @property
    def condition(self) -> GridEncoding:
        return GridEncoding(self.condition_columns, self.condition_rows)

    @property
    def positions(self) -> int:
        return self.grid[0] * self.grid[1]

    def fit_normalization(self, features: Tensor) -> None:
        """Set the normalization statistics from the features (N, C, h, w) of normal images."""
        for name, value in self._statistics(features).items():
            getattr(self, name).copy_(value)

    def _statistics(self, features: Tensor) -> dict[str, Tensor]:
        """The normalization statistics of normal features (N, C, h, w), by the name of the buffer they fill."""
        if self.normalization == "none":
            return {}
        mean, std = features.mean(dim=(0, 2, 3)), features.std(dim=(0, 2, 3)).clamp_min(1e-6)
        statistics = {"channel_mean": mean, "channel_std": std}
        if self.normalization == "position":
            position_mean, whitener = fit_whitening(_standardized(features, mean, std))
            statistics |= {"position_mean": position_mean, "whitener": whitener}
        return statistics

    def vectors(self, features: Tensor) -> Tensor:
        """The flow's inputs (B, h*w, C), positions in (y, x) order, from backbone features (B, C, h, w)."""
        return self._normalized(features, dict(self.named_buffers(recurse=False)))

    def cross_fitted_vectors(self, features: Tensor, folds: Tensor) -> Tensor:
        """:meth:`vectors` of normal images (N, C, h, w), each normalized with statistics fitted on the images of
        the other ``folds`` (N,) only: vectors distributed as an unseen good image's are under statistics fitted
        on every image (:mod:`bgad.crossfit`)."""
        out = torch.empty(len(features), self.positions, self.channels, dtype=features.dtype, device=features.device)
        for fold in folds.unique():
            held = folds == fold
            out[held] = self._normalized(features[held], self._statistics(features[~held]))
        return out

    def _normalized(self, features: Tensor, statistics: dict[str, Tensor]) -> Tensor:
        vectors = features.flatten(2).transpose(1, 2)
        if self.normalization == "none":
            return vectors
        vectors = (vectors - statistics["channel_mean"]) / statistics["channel_std"]
        if self.normalization == "position":
            vectors = whiten(vectors, statistics["position_mean"], statistics["whitener"])
        return vectors

    def log_prob(self, vectors: Tensor, positions: Tensor | None = None) -> Tensor:
        """Per-dimension log-likelihoods: of whole images (B, h*w, C) -> (B, h*w) when ``positions`` is None, else
        of vectors (M, C) at grid ``positions`` (M,) -> (M,)."""
        return self.flow.log_prob(vectors, self.condition, positions)

    def log_prob_map(self, features: Tensor) -> Tensor:
        """Log-likelihood map (B, h, w) of backbone features (B, C, h, w)."""
        return self.log_prob(self.vectors(features)).view(-1, *self.grid)

    @torch.inference_mode()
    def log_prob_rows(self, vectors: Tensor, positions: Tensor) -> Tensor:
        """:meth:`log_prob` of many cached vectors (M, C) at ``positions`` (M,), in chunks (no gradients)."""
        chunks = [self.log_prob(v, p) for v, p in zip(vectors.split(_CHUNK), positions.split(_CHUNK), strict=True)]
        return torch.cat(chunks) if chunks else vectors.new_empty(0)


def _standardized(features: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(B, C, h, w) -> (B, h*w, C), each channel standardized."""
    return (features.flatten(2).transpose(1, 2) - mean) / std
