"""Conditional normalizing flow: one per feature level (BGAD / CFLOW-AD, reference §2).

Each :class:`CouplingBlock` is the "all-in-one" block of FrEIA (``AllInOneBlock``) as BGAD configures it:
an affine coupling whose subnet (MLP, 2x hidden, ReLU) sees the first half of the vector and the positional
condition, outputs scaled by 0.1 and soft-clamped with ``alpha * tanh``; then a learned global affine with a
softplus scale; then a fixed random rotation in SO(C).

The subnet's first layer multiplies ``[x1; c]``. Its condition part ``W_c c`` depends only on the position,
so it is computed once per distinct position (the rows of a condition *table*) and gathered with an index
instead of being recomputed for every vector. This is exact, and it is what makes whole-image inference cheap.

Whole images are scored by :class:`GridFlow`, the same function rearranged: the condition term (one row per grid
column and one per grid row), the subnet's output scale and the global affine are folded into tables and weights
computed once (:meth:`ConditionalFlow.grid_flow`), so that a block is two matrix products for the subnet, one for
the rotation and a few element-wise passes; the last rotation is skipped, as it keeps ``|z|``. Only rounding
differs (and the stored float32 rotations are orthogonal to ~1e-7): maps agree with the general path's to 2e-6 of
their scale.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .encoding import Condition, GridEncoding, project_condition

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
# softplus_{beta=0.5}(g) * 0.1 == 1 at this value, so the global scale starts as the identity (FrEIA's init).
_GLOBAL_SCALE_INIT = 2.0 * math.log(math.exp(5.0) - 1.0)


def random_rotation(channels: int, generator: torch.Generator) -> Tensor:
    """Draw a uniformly random matrix of SO(channels) (Haar measure), reproducibly from ``generator``."""
    gauss = torch.randn(channels, channels, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)
    q = q * torch.sign(torch.diagonal(r))
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.float()


class CouplingBlock(nn.Module):
    """One affine coupling block with global affine and fixed rotation (FrEIA ``AllInOneBlock`` semantics)."""

    def __init__(self, channels: int, condition_dim: int, *, clamp_alpha: float, generator: torch.Generator):
        super().__init__()
        self.split = channels - channels // 2  # x1 takes ceil(C/2) dims, as in FrEIA
        self.clamp_alpha = clamp_alpha
        d_in = self.split + condition_dim
        self.subnet = nn.Sequential(nn.Linear(d_in, 2 * d_in), nn.ReLU(), nn.Linear(2 * d_in, 2 * (channels // 2)))
        # Redraw nn.Linear's default init, U(+-1/sqrt(fan_in)) for weight and bias, from ``generator`` so that
        # the flow's seed determines all of its initial weights, not only the rotations.
        with torch.no_grad():
            for layer in (self.subnet[0], self.subnet[2]):
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
        self.global_scale = nn.Parameter(torch.full((channels,), _GLOBAL_SCALE_INIT))
        self.global_offset = nn.Parameter(torch.zeros(channels))
        self.register_buffer("rotation", random_rotation(channels, generator))

    def condition_bias(self, condition: Condition, index: Tensor | None) -> Tensor:
        """The condition's contribution to the subnet's first layer, ``W_c c``, for each vector: (N, hidden)."""
        return project_condition(condition, self.subnet[0].weight[:, self.split :], index)

    def _coupling_params(self, x1: Tensor, cond_bias: Tensor) -> tuple[Tensor, Tensor]:
        first = self.subnet[0]
        hidden = F.linear(x1, first.weight[:, : self.split], first.bias) + cond_bias
        a = 0.1 * self.subnet[2](F.relu(hidden))
        half = a.shape[-1] // 2
        return self.clamp_alpha * torch.tanh(a[..., :half]), a[..., half:]

    def _scale(self) -> Tensor:
        return 0.1 * F.softplus(self.global_scale, beta=0.5)

    def forward(self, x: Tensor, cond_bias: Tensor) -> tuple[Tensor, Tensor]:
        """Map x (..., C) to (y, log|det J|) given the condition bias, broadcastable to (..., hidden)."""
        x1, x2 = x[..., : self.split], x[..., self.split :]
        log_scale, shift = self._coupling_params(x1, cond_bias)
        x2 = x2 * torch.exp(log_scale) + shift
        scale = self._scale()
        y = (torch.cat([x1, x2], dim=-1) * scale + self.global_offset) @ self.rotation.T
        return y, log_scale.sum(dim=-1) + torch.log(scale).sum()

    def inverse(self, y: Tensor, cond_bias: Tensor) -> Tensor:
        """Exact inverse of :meth:`forward`."""
        u = (y @ self.rotation - self.global_offset) / self._scale()
        x1, x2 = u[..., : self.split], u[..., self.split :]
        log_scale, shift = self._coupling_params(x1, cond_bias)
        return torch.cat([x1, (x2 - shift) * torch.exp(-log_scale)], dim=-1)

    def grid_block(self, condition: GridEncoding) -> GridBlock:
        """This block as a :class:`GridBlock` for every position of ``condition``'s grid."""
        first, last = self.subnet[0], self.subnet[2]
        by_column, by_row = condition.separate_projections(first.weight[:, self.split :])
        scale = self._scale()
        return GridBlock(
            column_bias=by_column + first.bias,
            row_bias=by_row,
            weight_in=first.weight[:, : self.split].T,
            weight_out=_sigmoid_form(last.weight).T,
            bias_out=_sigmoid_form(last.bias),
            scale=scale,
            offset=self.global_offset,
            rotation=scale[:, None] * self.rotation.T,
            rotated_offset=self.global_offset @ self.rotation.T,
            clamp_alpha=self.clamp_alpha,
        )


def _sigmoid_form(last: Tensor) -> Tensor:
    """The rows of the subnet's last layer (weight or bias) times its output scale 0.1, the log-scale half times 2
    more: ``alpha tanh(u) = 2 alpha sigmoid(2u) - alpha``, and sigmoid is 5x faster than tanh on a CPU."""
    half = len(last) // 2
    return 0.1 * torch.cat([2 * last[:half], last[half:]])


class GridBlock(NamedTuple):
    """A :class:`CouplingBlock` for the vectors of whole images, with what does not depend on them precomputed."""

    # The subnet's first bias plus its condition term W_c c at position (y, x): column_bias[x] + row_bias[y]
    column_bias: Tensor  # (w, hidden)
    row_bias: Tensor  # (h, hidden)
    weight_in: Tensor  # (split, hidden): the first layer's weight on x1, transposed
    weight_out: Tensor  # (hidden, 2 (C - split)): the last layer's weight in :func:`_sigmoid_form`, transposed
    bias_out: Tensor  # its bias in :func:`_sigmoid_form`
    scale: Tensor  # (C,): the global affine's scale
    offset: Tensor  # (C,): and its offset
    rotation: Tensor  # (C, C): diag(scale) R^T, the global affine and the rotation as one matrix
    rotated_offset: Tensor  # (C,): offset R^T
    clamp_alpha: float

    def coupled(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The coupling of the vectors x (B P, C) of B whole images, before the global affine, and its log|det|."""
        split, hidden_size = self.weight_in.shape
        x1, x2 = x[:, :split], x[:, split:]
        hidden = (x1 @ self.weight_in).view(-1, len(self.row_bias), len(self.column_bias), hidden_size)
        hidden = hidden.add_(self.column_bias).add_(self.row_bias[:, None]).flatten(0, 2)
        a = torch.addmm(self.bias_out, hidden.relu_(), self.weight_out)
        half = a.shape[1] // 2
        log_scale = torch.sigmoid(a[:, :half]).mul(2 * self.clamp_alpha).sub_(self.clamp_alpha)
        x2 = torch.addcmul(a[:, half:], x2, log_scale.exp())
        return torch.cat([x1, x2], dim=1), log_scale.sum(dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`CouplingBlock.forward` of the vectors x (B P, C) of B whole images."""
        coupled, log_det = self.coupled(x)
        return torch.addmm(self.rotated_offset, coupled, self.rotation), log_det


class GridFlow(NamedTuple):
    """A :class:`ConditionalFlow` that scores every position of whole images (inference); see the module's doc."""

    blocks: tuple[GridBlock, ...]
    log_det: Tensor  # the global affines' part of log|det J|, the same for every vector

    def log_prob(self, vectors: Tensor) -> Tensor:
        """:meth:`ConditionalFlow.log_prob` of the vectors (B, P, C) of whole images, positions in grid order."""
        channels = vectors.shape[-1]
        x, log_det = vectors.flatten(0, 1), self.log_det
        for block in self.blocks[:-1]:
            x, block_log_det = block.forward(x)
            log_det = log_det + block_log_det
        last = self.blocks[-1]
        coupled, block_log_det = last.coupled(x)
        squared_norm = torch.addcmul(last.offset, coupled, last.scale).square().sum(dim=1)  # |z|: R keeps it
        log_prob = (log_det + block_log_det - 0.5 * squared_norm) / channels - _HALF_LOG_2PI
        return log_prob.view(vectors.shape[:2])


class ConditionalFlow(nn.Module):
    """A stack of :class:`CouplingBlock` s over C-dimensional feature vectors with a positional condition.

    Every method takes vectors ``x`` (N, C) with the condition as a table (P, D) or a
    :class:`~bgad.method.encoding.GridEncoding` and ``index`` (N,), the table row of each vector. With ``index=None``
    the table's rows match ``x``'s second-to-last dimension: x (N, C) with one row per vector, or whole images x (B, P,
    C) whose P positions all share one table (no per-vector gather at inference).
    """

    def __init__(
        self, channels: int, *, condition_dim: int = 128, n_blocks: int = 8, clamp_alpha: float = 1.9, seed: int = 0
    ):
        super().__init__()
        self.channels = channels
        generator = torch.Generator().manual_seed(seed)
        self.blocks = nn.ModuleList(
            CouplingBlock(channels, condition_dim, clamp_alpha=clamp_alpha, generator=generator)
            for _ in range(n_blocks)
        )

    def forward(self, x: Tensor, condition: Condition, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Return the latent z (..., C) and log|det dz/dx| (...)."""
        log_det = x.new_zeros(x.shape[:-1])
        for block in self.blocks:
            x, block_log_det = block(x, block.condition_bias(condition, index))
            log_det = log_det + block_log_det
        return x, log_det

    def inverse(self, z: Tensor, condition: Condition, index: Tensor | None = None) -> Tensor:
        """Map latents back to feature vectors."""
        for block in reversed(self.blocks):
            z = block.inverse(z, block.condition_bias(condition, index))
        return z

    def log_prob(self, x: Tensor, condition: Condition, index: Tensor | None = None) -> Tensor:
        """Per-dimension log-likelihood ``log p(x | c) / C`` of each vector (...) under a standard normal latent."""
        z, log_det = self(x, condition, index)
        return (log_det - 0.5 * z.square().sum(dim=-1)) / self.channels - _HALF_LOG_2PI

    def grid_flow(self, condition: GridEncoding) -> GridFlow:
        """This flow as a :class:`GridFlow` for whole images on ``condition``'s grid, from the current weights
        (differentiable where gradients are on; recompute it after any change of weights)."""
        blocks = tuple(block.grid_block(condition) for block in self.blocks)
        return GridFlow(blocks, torch.log(torch.stack([block.scale for block in blocks])).sum())
