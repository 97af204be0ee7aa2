"""One feature level of the model: how its backbone features are normalized, its positional condition and its flow.

A :class:`FeatureLevel` is the only place where a level's vectors are made and scored: training, calibration,
inference, ``bgad speed`` and the benchmarks all go through :meth:`FeatureLevel.vectors` and
:meth:`FeatureLevel.log_prob`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import Normalization
from .encoding import GridEncoding
from .flow import ConditionalFlow, GridFlow
from .whitening import fit_whitening, whiten

_CHUNK = 65536  # vectors per flow call when scoring many (bounds the activations' memory)


class FeatureLevel(nn.Module):
    """Normalization, positional condition and conditional flow of one backbone level with an (h, w) grid.

    ``normalization`` (see :class:`bgad.config.ModelConfig`): ``"position"`` standardizes each channel, then
    whitens every position with its own Gaussian (:mod:`bgad.method.whitening`); ``"channel"`` only standardizes
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
        # Calibration (bgad.method.scoring): the largest log-likelihood of the training normals at this level.
        self.register_buffer("log_prob_max", torch.zeros(()))
        self._grid_flow_cache: tuple[GridFlow, list[tuple[int, int]], list[Tensor]] | None = None

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
        on every image (:mod:`bgad.method.crossfit`)."""
        out = torch.empty(len(features), self.positions, self.channels, dtype=features.dtype, device=features.device)
        for fold in folds.unique():
            held = folds == fold
            out[held] = self._normalized(features[held], self._statistics(features[~held]))
        return out

    def _normalized(self, features: Tensor, statistics: dict[str, Tensor]) -> Tensor:
        # contiguous: whitening a transposed view made batched products of 1 x C rows, 10x slower at batch 1
        vectors = features.flatten(2).transpose(1, 2).contiguous()
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
        """Log-likelihood map (B, h, w) of backbone features (B, C, h, w): :meth:`log_prob` of whole images, computed
        by the flow's :class:`~bgad.method.flow.GridFlow`."""
        return self.grid_flow().log_prob(self.vectors(features)).view(-1, *self.grid)

    def grid_flow(self) -> GridFlow:
        """The flow arranged for whole images (:meth:`bgad.method.flow.ConditionalFlow.grid_flow`). Without gradients it
        is computed once and kept while every parameter and buffer of the level stays as it was: an in-place change
        (an optimizer step, ``load_state_dict``) moves a tensor's version counter, and a move, a cast or a new
        tensor changes its storage, whose old one the cache holds so that no new tensor can take its address.
        With gradients, when traced (export, ``torch.compile``) and for inference tensors (no version counter) it
        is computed at each call."""
        if torch.compiler.is_compiling() or torch.is_grad_enabled():
            return self.flow.grid_flow(self.condition)
        tensors = [*self.parameters(), *self.buffers()]
        if any(t.is_inference() for t in tensors):
            return self.flow.grid_flow(self.condition)
        stamp = [(t.data_ptr(), t._version) for t in tensors]
        cache = self._grid_flow_cache
        if cache is None or cache[1] != stamp:
            cache = (self.flow.grid_flow(self.condition), stamp, [t.detach() for t in tensors])
            self._grid_flow_cache = cache
        return cache[0]

    def __getstate__(self) -> dict[str, object]:
        """Copies (``copy.deepcopy``) leave the grid flow's cache behind: it is rebuilt at their first call."""
        return {**super().__getstate__(), "_grid_flow_cache": None}

    @torch.inference_mode()
    def log_prob_rows(self, vectors: Tensor, positions: Tensor) -> Tensor:
        """:meth:`log_prob` of many cached vectors (M, C) at ``positions`` (M,), in chunks (no gradients)."""
        chunks = [self.log_prob(v, p) for v, p in zip(vectors.split(_CHUNK), positions.split(_CHUNK), strict=True)]
        return torch.cat(chunks) if chunks else vectors.new_empty(0)


def _standardized(features: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(B, C, h, w) -> (B, h*w, C), each channel standardized."""
    return (features.flatten(2).transpose(1, 2) - mean) / std
