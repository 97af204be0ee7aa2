"""Tiled models (:attr:`bgad.config.ModelConfig.tile_size` > 0): training images become tiles, tiles' maps
become image maps (the geometry is :mod:`bgad.data.tiles`).

Every training image (normal or known anomaly) is replaced by its tiles, each trained on as an image of its own
(the positional condition is the position inside the tile). Calibration keeps track of which image each tile came
from: an image's score is the maximum over its tiles' cores, so thresholds on training tiles mean what they mean
on stitched maps at inference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..data.images import BLACK, Color, ImageSource, image_to_tensor, read_image
from ..data.tiles import Tile, core_masks, crop_mask, crop_tiles, stitch, tile_grid
from .scoring import resize_maps


@dataclass(frozen=True)
class Tiled:
    """Images cut into tiles: the tiles, the mask of each (for labelled images), the index of the image each tile
    came from (``owner``) and the pixels each tile owns on the model's input (``valid``, (T, S, S))."""

    images: list[Image.Image]
    masks: list[Tensor]
    owner: np.ndarray
    valid: Tensor


def tile_images(
    images: Sequence[ImageSource], masks: Sequence[Tensor] | None, *, tile_size: int, overlap: int, image_size: int
) -> Tiled:
    """Cut ``images`` (and their ``masks``, if given) into tiles."""
    tiles_of, owner, grids = [], [], []
    tile_masks: list[Tensor] = []
    for index, image in enumerate(images):
        picture = read_image(image)
        grid = tile_grid(picture.height, picture.width, tile_size, overlap)
        tiles_of += crop_tiles(picture, grid)
        owner += [index] * len(grid)
        grids += grid
        if masks is not None:
            tile_masks += [torch.from_numpy(np.ascontiguousarray(crop_mask(masks[index].numpy(), t))) for t in grid]
    return Tiled(tiles_of, tile_masks, np.array(owner, dtype=np.int64), core_masks(grids, image_size))


def image_max(tile_scores: np.ndarray, owner: np.ndarray | None) -> np.ndarray:
    """Per-image maxima of per-tile scores (the scores themselves when ``owner`` is None: not tiled)."""
    if owner is None:
        return tile_scores
    out = np.full(int(owner.max()) + 1, -np.inf)
    np.maximum.at(out, owner, tile_scores)
    return out


@torch.inference_mode()
def stitched_map(
    maps_of_batch: Callable[[Tensor], Tensor],
    picture: Image.Image,
    *,
    image_size: int,
    tile_size: int,
    overlap: int,
    batch_size: int,
    fill: Color = BLACK,
) -> Tensor:
    """The (H, W) anomaly map of a whole image from its tiles' maps, ``batch_size`` tiles per model call."""
    grid = tile_grid(picture.height, picture.width, tile_size, overlap)
    tiles = crop_tiles(picture, grid)
    maps: list[Tensor] = []
    for start in range(0, len(tiles), batch_size):
        batch = torch.stack(
            [image_to_tensor(t, image_size, "stretch", fill) for t in tiles[start : start + batch_size]]
        )
        maps += list(maps_of_batch(batch))
    at_tile_size = [_at_size(m, t) for m, t in zip(maps, grid, strict=True)]
    return stitch(at_tile_size, grid, (picture.height, picture.width))


def _at_size(tile_map: Tensor, tile: Tile) -> Tensor:
    _, _, h, w = tile.box
    return tile_map if tuple(tile_map.shape) == (h, w) else resize_maps(tile_map[None], (h, w))[0]


def input_grid(full_map: Tensor, size: int) -> Tensor:
    """An image's stitched map on the model's ``size x size`` grid for evaluation: max pooling, so a defect
    smaller than a grid cell keeps its peak (and the image score, the map's maximum, is unchanged)."""
    return F.adaptive_max_pool2d(full_map[None, None], size)[0, 0]
