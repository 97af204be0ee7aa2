"""Tiled prediction against the backbone on the same tiles: seconds per megapixel (issue 25, item 3).

The default model with ``tile_size`` 256 (32-px overlap), untrained (timings do not depend on the weights) and
calibrated on random images, in eager torch. One random RGB image of ``--side`` x ``--side`` pixels is cut into
its tiles (as :func:`bgad.method.tiling.stitched_map` cuts it). Per megapixel of the image, median of
``--repeats`` calls after a warm-up:

- **backbone**: the backbone alone on the tiles' input tensors, ``--batch-size`` tiles per call (the goal's unit);
- **model**: backbone and flows (the anomaly maps) on the same tensors;
- **tiled prediction**: :func:`bgad.inference.scored_maps`, what ``bgad predict`` runs per image: cropping, input
  tensors, the model, resizing the tiles' maps and stitching them at the image's resolution.

    OMP_NUM_THREADS=2 python benchmarks/tiled_cost.py --side 2048
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from flow_inference import calibrated
from PIL import Image

from bgad.app.speed import median_seconds
from bgad.config import BGADConfig
from bgad.data.images import BLACK, image_to_tensor
from bgad.data.tiles import crop_tiles, tile_grid
from bgad.inference import scored_maps
from bgad.method.model import BGADModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=2048, help="the image's side in pixels")
    parser.add_argument("--batch-size", type=int, default=4, help="tiles per model call (bgad predict's default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = BGADConfig.from_dict({"model": {"tile_size": 256, "tile_overlap": 32}}).model
    model = calibrated(BGADModel(config).eval())
    pixels = np.random.default_rng(0).integers(0, 256, (args.side, args.side, 3), dtype=np.uint8)
    picture = Image.fromarray(pixels)
    tiles = crop_tiles(picture, tile_grid(args.side, args.side, config.tile_size, config.tile_overlap))
    batches = [
        torch.stack([image_to_tensor(t, config.image_size, "stretch", BLACK) for t in tiles[i : i + args.batch_size]])
        for i in range(0, len(tiles), args.batch_size)
    ]
    timed = {
        "backbone": lambda: [model.extractor(b) for b in batches],
        "model": lambda: [model(b) for b in batches],
        "tiled prediction": lambda: scored_maps(model, [picture], config, args.batch_size, BLACK),
    }
    megapixels = args.side**2 / 1e6
    with torch.inference_mode():
        seconds = {name: median_seconds(fn, repeats=args.repeats, warmup=1) / megapixels for name, fn in timed.items()}
    print(
        f"{args.side} x {args.side} image, {len(tiles)} tiles of {config.tile_size} px, batch {args.batch_size}, "
        f"{args.threads} threads\n| measured | s / MP | ÷ backbone |\n|---|---:|---:|"
    )
    for name, value in seconds.items():
        print(f"| {name} | {value:.3f} | {value / seconds['backbone']:.2f} |")


if __name__ == "__main__":
    main()
