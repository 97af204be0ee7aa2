"""Screen feature levels with what a user has: per-position Gaussians, out-of-fold training normals, known anomalies.

A quick check, before training any flow, of whether a level (e.g. the coarse stride 32) carries signal that the
default levels lack. For one category and seed (the benchmark's split: ``train.num_anomalies`` known anomalies
drawn by the seed), every level's features of the training normals are whitened per position
(:func:`bgad.method.whitening.fit_whitening`, as the flows' input) in 3 folds: each normal is scored by the Gaussians
of the other two folds, each known anomaly by the mean of the three folds' maps. A level's map is the Mahalanobis
distance, upsampled to the input; levels are combined by summing maps standardized by the out-of-fold normals' mean
and standard deviation. It prints image AUROC, pixel AUROC and AUPRO of the known anomalies against the out-of-fold
normals for each combination. The evaluation images are never read.

    python benchmarks/level_screen.py --data-root ../shared/data/surface --category magnetic_tile --seed 0
    python benchmarks/level_screen.py ... --strides 8,16 --backbone efficientnet_lite1    # another backbone
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bgad import metrics
from bgad.config import TrainConfig
from bgad.data.images import mask_to_tensor, read_mask
from bgad.data.layouts import load_mvtec
from bgad.data.samples import make_split
from bgad.method.backbones import create_backbone
from bgad.method.features import extract_features
from bgad.method.whitening import fit_whitening, whiten

FOLDS = 3


def distance_maps(normal: torch.Tensor, known: torch.Tensor, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold Mahalanobis maps (N, S, S) of the normals and fold-averaged maps (A, S, S) of the known anomalies,
    from one level's features (N, C, h, w) and (A, C, h, w)."""
    grid = normal.shape[-2:]
    normal, known = (f.flatten(2).transpose(1, 2) for f in (normal, known))
    fold = torch.arange(len(normal)) % FOLDS

    def upsampled(vectors: torch.Tensor, mean: torch.Tensor, whitener: torch.Tensor) -> torch.Tensor:
        distance = whiten(vectors, mean, whitener).square().sum(-1).sqrt().view(-1, 1, *grid)
        return F.interpolate(distance, size=(size, size), mode="bilinear", align_corners=False)[:, 0]

    normal_maps, known_maps = torch.zeros(len(normal), size, size), torch.zeros(len(known), size, size)
    for k in range(FOLDS):
        train = normal[fold != k]
        center, scale = train.mean(dim=(0, 1)), train.std(dim=(0, 1)) + 1e-6
        mean, whitener = fit_whitening((train - center) / scale)
        normal_maps[fold == k] = upsampled((normal[fold == k] - center) / scale, mean, whitener)
        known_maps += upsampled((known - center) / scale, mean, whitener) / FOLDS
    return normal_maps.numpy(), known_maps.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strides", default="8,16,32")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    args = parser.parse_args()
    strides = tuple(int(s) for s in args.strides.split(","))
    size = args.image_size
    split = make_split(load_mvtec(args.data_root, args.category), TrainConfig(seed=args.seed))
    extractor = create_backbone(args.backbone, size, strides)
    options = {"image_size": size, "batch_size": 4, "progress": False}
    normal = extract_features(extractor, [s.path for s in split.train], **options)
    known = extract_features(extractor, [s.path for s in split.known], **options)
    masks = torch.stack([mask_to_tensor(read_mask(s.mask_path), size) for s in split.known]).numpy() > 0.5
    maps = {s: distance_maps(n, k, size) for s, n, k in zip(strides, normal, known, strict=True)}
    labels = np.concatenate([np.zeros((len(normal[0]), size, size), bool), masks])
    image_labels = np.r_[np.zeros(len(normal[0])), np.ones(len(masks))]
    print(f"| {args.category}, seed {args.seed}, {args.backbone}: levels | image AUROC | pixel AUROC | AUPRO |")
    print("|---|---:|---:|---:|")
    for count in range(1, len(strides) + 1):
        for levels in itertools.combinations(strides, count):
            combined = sum(
                (np.concatenate([maps[s][0], maps[s][1]]) - maps[s][0].mean()) / maps[s][0].std() for s in levels
            )
            print(
                f"| {'+'.join(map(str, levels))} | {metrics.image_auroc(combined.max(axis=(1, 2)), image_labels):.3f} "
                f"| {metrics.pixel_auroc(combined, labels):.3f} | {metrics.aupro(combined, labels):.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
