"""Tiling large images: overlapping ``tile_size`` squares, each seen by the model as one image, and the tiles'
maps stitched back into one map at the image's resolution (:attr:`bgad.config.ModelConfig.tile_size`).

Tiles start every ``tile_size - overlap`` pixels; the last row and column are moved in to end at the border, so
neighbours overlap by at least ``overlap``. An image side shorter than a tile gets one tile of that side.

Stitching: a pixel covered by several tiles takes its value from the tile it lies deepest in (its *core*: each
overlap is split at its middle), not an average. A CNN's features near a tile's border see the backbone's zero
padding, so the tile whose centre is nearer has the better value there; and since the cores partition the image,
the calibration computed on training tiles (each pixel counted once, image score = maximum over the image's
tiles) is exactly what inference on the stitched map gives.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

Box = tuple[int, int, int, int]  # top, left, height, width


@dataclass(frozen=True)
class Tile:
    box: Box  # where the tile lies in the image
    core: Box  # the pixels it owns when stitching, relative to the tile's own top-left corner


def _spans(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(start, size, core start, core stop) of the tiles along one side, core bounds relative to the start."""
    if length <= tile:
        return [(0, length, 0, length)]
    starts = [*range(0, length - tile, tile - overlap), length - tile]
    cuts = [0, *((a + tile + b) // 2 for a, b in itertools.pairwise(starts)), length]
    return [(start, tile, cuts[i] - start, cuts[i + 1] - start) for i, start in enumerate(starts)]


def tile_grid(height: int, width: int, tile_size: int, overlap: int) -> list[Tile]:
    """The tiles of an (height, width) image, row by row.

    >>> [t.box for t in tile_grid(100, 60, 48, 8)]
    [(0, 0, 48, 48), (0, 12, 48, 48), (40, 0, 48, 48), (40, 12, 48, 48), (52, 0, 48, 48), (52, 12, 48, 48)]
    """
    rows, columns = _spans(height, tile_size, overlap), _spans(width, tile_size, overlap)
    return [
        Tile((top, left, h, w), (core_top, core_left, core_bottom - core_top, core_right - core_left))
        for top, h, core_top, core_bottom in rows
        for left, w, core_left, core_right in columns
    ]


def crop_tiles(image: Image.Image, tiles: Sequence[Tile]) -> list[Image.Image]:
    """The tiles' pixels as images of their own."""
    return [image.crop((left, top, left + w, top + h)) for top, left, h, w in (t.box for t in tiles)]


def crop_mask(mask: np.ndarray, tile: Tile) -> np.ndarray:
    top, left, h, w = tile.box
    return mask[top : top + h, left : left + w]


def stitch(maps: Sequence[Tensor], tiles: Sequence[Tile], shape: tuple[int, int]) -> Tensor:
    """One (H, W) map from the tiles' maps, each at its tile's size: every pixel from the tile whose core holds it."""
    out = torch.empty(shape, dtype=maps[0].dtype)
    for tile_map, tile in zip(maps, tiles, strict=True):
        top, left, _, _ = tile.box
        core_top, core_left, core_h, core_w = tile.core
        rows, columns = slice(core_top, core_top + core_h), slice(core_left, core_left + core_w)
        out[top + core_top : top + core_top + core_h, left + core_left : left + core_left + core_w] = tile_map[
            rows, columns
        ]
    return out


def core_masks(tiles: Sequence[Tile], size: int) -> Tensor:
    """(T, size, size) boolean masks of the tiles' cores on the model's square input (a tile is stretched to it)."""
    out = torch.zeros(len(tiles), size, size, dtype=torch.bool)
    for i, tile in enumerate(tiles):
        _, _, h, w = tile.box
        core_top, core_left, core_h, core_w = tile.core
        y0, y1 = round(core_top * size / h), round((core_top + core_h) * size / h)
        x0, x1 = round(core_left * size / w), round((core_left + core_w) * size / w)
        out[i, y0:y1, x0:x1] = True
    return out
