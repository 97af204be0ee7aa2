"""Evaluate a fitted detector once on held-out images: scores, maps at the input size, and metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import metrics
from .data import Sample
from .images import ImageSource, mask_to_tensor, read_mask
from .scoring import image_scores


class AnomalyMapper(Protocol):
    """Anything with BGAD's ``anomaly_maps``: a fitted :class:`bgad.BGAD` or a baseline of :mod:`bgad.baselines`."""

    def anomaly_maps(self, images: Sequence[ImageSource], *, batch_size: int = ...) -> Tensor: ...


@dataclass(frozen=True)
class Evaluation:
    """Per-image results on an evaluation set; maps and masks are at the model's input size."""

    samples: tuple[Sample, ...]
    scores: np.ndarray  # (N,)
    anomaly_maps: np.ndarray  # (N, S, S) float32
    masks: np.ndarray  # (N, S, S) bool

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.is_anomalous for s in self.samples], dtype=np.int64)

    def metrics(self) -> dict[str, float | int]:
        """Image- and pixel-level metrics; pixel metrics at the input size (masks resized nearest)."""
        return {
            "image_auroc": metrics.image_auroc(self.scores, self.labels),
            "pixel_auroc": metrics.pixel_auroc(self.anomaly_maps, self.masks),
            "pixel_aupro": metrics.aupro(self.anomaly_maps, self.masks),
            "image_ap": metrics.image_ap(self.scores, self.labels),
            "pixel_ap": metrics.pixel_ap(self.anomaly_maps, self.masks),
            "n_eval_images": len(self.samples),
        }

    def per_type_metrics(self, seen_types: set[str]) -> dict[str, dict[str, float | bool]]:
        """Metrics of each defect type against the good images, marked ``seen`` if trained on; plus the mean
        over the unseen types as ``"unseen_mean"`` (the hard setting's headline number) when there are some."""
        types = sorted({s.defect_type for s in self.samples if s.is_anomalous})
        good = self.labels == 0
        out: dict[str, dict[str, float | bool]] = {}
        for defect_type in types:
            keep = good | np.array([s.defect_type == defect_type for s in self.samples])
            maps, masks = self.anomaly_maps[keep], self.masks[keep]
            out[defect_type] = {
                "image_auroc": metrics.image_auroc(self.scores[keep], self.labels[keep]),
                "pixel_auroc": metrics.pixel_auroc(maps, masks),
                "pixel_aupro": metrics.aupro(maps, masks),
                "n_images": int(keep.sum() - good.sum()),
                "seen": defect_type in seen_types,
            }
        unseen = [v for v in out.values() if not v["seen"]]
        if unseen and len(unseen) < len(out):
            out["unseen_mean"] = {
                key: float(np.mean([v[key] for v in unseen])) for key in ("image_auroc", "pixel_auroc", "pixel_aupro")
            }
        return out


def evaluate(
    detector: AnomalyMapper, samples: Sequence[Sample], *, batch_size: int = 4, progress: bool = True
) -> Evaluation:
    """Score ``samples`` with ``detector``; the result does not depend on which other images are scored."""
    maps = []
    for start in tqdm(range(0, len(samples), batch_size), desc="evaluating", unit="batch", disable=not progress):
        maps.append(detector.anomaly_maps([s.path for s in samples[start : start + batch_size]], batch_size=batch_size))
    anomaly_maps = torch.cat(maps)
    size = anomaly_maps.shape[-1]
    masks = [
        mask_to_tensor(read_mask(s.mask_path), size) if s.mask_path else torch.zeros(size, size, dtype=torch.bool)
        for s in samples
    ]
    return Evaluation(
        samples=tuple(samples),
        scores=image_scores(anomaly_maps).numpy(),
        anomaly_maps=anomaly_maps.numpy(),
        masks=torch.stack(masks).numpy(),
    )
