"""2-D sinusoidal positional encoding used as the flows' condition (CFLOW-AD / BGAD reference §2.3)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def positional_encoding_2d(channels: int, height: int, width: int) -> Tensor:
    """Return the (height * width, channels) sin/cos encoding of every position, rows in (y, x) order.

    The first half of the channels encodes the column index, the second half the row index; both use raw
    integer indices, so each feature level gets its own grid, as in the reference implementation.
    """
    if channels % 4:
        raise ValueError(f"channels must be a multiple of 4, got {channels}")
    half = channels // 2
    freq = torch.exp(torch.arange(0, half, 2, dtype=torch.float64) * -(math.log(10000.0) / half))
    enc = torch.zeros(channels, height, width, dtype=torch.float64)
    xs = torch.arange(width, dtype=torch.float64)[:, None] * freq  # (W, half/2)
    ys = torch.arange(height, dtype=torch.float64)[:, None] * freq  # (H, half/2)
    enc[0:half:2] = torch.sin(xs).T[:, None, :].expand(-1, height, -1)
    enc[1:half:2] = torch.cos(xs).T[:, None, :].expand(-1, height, -1)
    enc[half::2] = torch.sin(ys).T[:, :, None].expand(-1, -1, width)
    enc[half + 1 :: 2] = torch.cos(ys).T[:, :, None].expand(-1, -1, width)
    return enc.flatten(1).T.float().contiguous()
