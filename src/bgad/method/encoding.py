"""2-D sinusoidal positional encoding used as the flows' condition (CFLOW-AD / BGAD reference §2.3).

The encoding of position (y, x) is ``[e(x); e(y)]`` with ``e`` a 1-D sin/cos encoding of D/2 channels. Because
it is separable, the coupling subnet's condition term splits exactly: ``W c = W_x e(x) + W_y e(y)``. A
:class:`GridEncoding` computes that from one row per column and one per image row, instead of one per
position: at stride 4 on a 256-pixel image, 128 rows instead of 4096.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def sinusoidal_encoding_1d(channels: int, length: int) -> Tensor:
    """(length, channels): channel 2k is sin(i·ω_k), 2k+1 is cos(i·ω_k), ω_k = 10000^(-2k/channels), i raw."""
    freq = torch.exp(torch.arange(0, channels, 2, dtype=torch.float64) * -(math.log(10000.0) / channels))
    angles = torch.arange(length, dtype=torch.float64)[:, None] * freq
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=2).flatten(1).float()


class GridEncoding(NamedTuple):
    """The positional encoding of an (h, w) grid, stored separably; positions are flat indices y * w + x."""

    columns: Tensor  # (w, D/2): e(x)
    rows: Tensor  # (h, D/2): e(y)

    @classmethod
    def create(cls, channels: int, height: int, width: int) -> GridEncoding:
        if channels % 4:
            raise ValueError(f"channels must be a multiple of 4, got {channels}")
        return cls(sinusoidal_encoding_1d(channels // 2, width), sinusoidal_encoding_1d(channels // 2, height))

    def table(self) -> Tensor:
        """The full (h * w, D) encoding, rows in (y, x) order."""
        h, w = len(self.rows), len(self.columns)
        return torch.cat([self.columns.repeat(h, 1), self.rows.repeat_interleave(w, dim=0)], dim=1)

    def separate_projections(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        """``weight @ c`` in its two terms: (w, hidden) by column and (h, hidden) by row; position (y, x) has
        ``by_column[x] + by_row[y]``."""
        half = self.columns.shape[1]
        return F.linear(self.columns, weight[:, :half]), F.linear(self.rows, weight[:, half:])

    def project(self, weight: Tensor, positions: Tensor | None) -> Tensor:
        """``weight @ c`` for the vectors at ``positions`` (N,), or for every position in order if None."""
        by_column, by_row = self.separate_projections(weight)
        if positions is None:
            return (by_row[:, None, :] + by_column[None, :, :]).flatten(0, 1)
        # index_select: its backward (index_add) is ~10x faster on CPU than that of tensor[index].
        width = len(self.columns)
        return by_column.index_select(0, positions % width) + by_row.index_select(0, positions // width)


def positional_encoding_2d(channels: int, height: int, width: int) -> Tensor:
    """Return the (height * width, channels) encoding of every position, rows in (y, x) order.

    The first half of the channels encodes the column index, the second half the row index; both use raw
    integer indices, so each feature level gets its own grid, as in the reference implementation.
    """
    return GridEncoding.create(channels, height, width).table()


Condition = Tensor | GridEncoding


def project_condition(condition: Condition, weight: Tensor, positions: Tensor | None) -> Tensor:
    """``weight @ c`` (N, hidden) for each vector, from a (P, D) table or a :class:`GridEncoding`.

    ``positions`` gives each vector's row in the table; None means the table already has one row per vector.
    """
    if isinstance(condition, GridEncoding):
        return condition.project(weight, positions)
    projected = F.linear(condition, weight)
    return projected if positions is None else projected.index_select(0, positions)
