"""Evaluate a fitted detector once on held-out images: scores, maps at the input size, and metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from . import metrics
from .data.images import ImageSource, content_box, content_masks, image_shape, mask_to_tensor, read_mask
from .data.samples import Sample
from .method.scoring import image_scores, resize_maps
from .method.thresholds import Thresholds
from .runtime.progress import progress as progress_bar

EVAL_SIZES = ("input", "full")  # pixel metrics on the model's input grid, or at each image's own resolution


class AnomalyMapper(Protocol):
    """Anything with BGAD's ``anomaly_maps`` and ``resize``: a fitted :class:`bgad.BGAD` or a baseline of
    :mod:`bgad.app.baselines`."""

    @property
    def resize(self) -> str: ...

    def anomaly_maps(self, images: Sequence[ImageSource], *, batch_size: int = ...) -> Tensor: ...


@dataclass(frozen=True)
class Metrics:
    """The threshold-free metrics of one evaluation; NaN where a metric is undefined (e.g. no good images)."""

    image_auroc: float
    pixel_auroc: float
    pixel_aupro: float
    image_ap: float
    pixel_ap: float
    n_eval_images: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class Evaluation:
    """Per-image results on an evaluation set, in the evaluation space: the model's S x S input.

    Maps are the model's output; masks are resized to the image's place on the input (nearest neighbour). With
    ``resize="pad"`` only ``valid``, each image's content box, counts: image scores are maxima over it and pixel
    metrics use its pixels only (pad pixels are neither normal nor defect). ``valid`` None: every pixel counts.
    """

    samples: tuple[Sample, ...]
    scores: np.ndarray  # (N,)
    anomaly_maps: np.ndarray  # (N, S, S) float32
    masks: np.ndarray  # (N, S, S) bool
    valid: np.ndarray | None = None  # (N, S, S) bool: the content pixels; None = all
    resize: str = "stretch"  # how the images were fitted to the input (bgad.data.images.to_canvas shows them so)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.is_anomalous for s in self.samples], dtype=np.int64)

    @property
    def labelled(self) -> np.ndarray | None:
        """The pixels pixel metrics use: ``valid`` ones of images with pixel labels, i.e. without the defect images
        that have no mask (image-level-only samples); None when every pixel counts."""
        has_labels = np.array([s.has_pixel_labels for s in self.samples])
        if has_labels.all():
            return self.valid
        content = np.ones(self.masks.shape, dtype=bool) if self.valid is None else self.valid
        return content & has_labels[:, None, None]

    def pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly-map values and mask labels of the pixels that count (see :attr:`labelled`), flattened."""
        labelled = self.labelled
        if labelled is None:
            return self.anomaly_maps.reshape(-1), self.masks.reshape(-1)
        return self.anomaly_maps[labelled], self.masks[labelled]

    def metrics(self) -> Metrics:
        """Image- and pixel-level metrics; pixel metrics in the evaluation space (see the class docstring)."""
        labelled = self.labelled
        return Metrics(
            image_auroc=metrics.image_auroc(self.scores, self.labels),
            pixel_auroc=metrics.pixel_auroc(self.anomaly_maps, self.masks, valid=labelled),
            pixel_aupro=metrics.aupro(self.anomaly_maps, self.masks, valid=labelled),
            image_ap=metrics.image_ap(self.scores, self.labels),
            pixel_ap=metrics.pixel_ap(self.anomaly_maps, self.masks, valid=labelled),
            n_eval_images=len(self.samples),
        )

    def decisions(self, thresholds: Thresholds, *, mask_every_image: bool = False) -> dict[str, Any]:
        """What ``thresholds`` decide on this set, as a user gets it: image verdicts, and masks of the map above the
        pixel threshold on flagged images (empty on images judged good, unless ``mask_every_image``), against the
        labels.

        ``image`` and ``pixel``: precision, recall, F1, FPR and the confusion matrix (pixels: the labelled ones);
        ``mask_iou`` / ``mask_f1``: means over images with pixel labels of the per-image IoU and F1, a good image
        with an empty mask counting 1; ``good_images_with_masks``; F1-max of scores and pixels for reference.
        """
        flagged = self.scores > thresholds.image
        predicted = (self.anomaly_maps > thresholds.pixel) & (flagged | mask_every_image)[:, None, None]
        labelled = self.labelled
        if labelled is not None:
            predicted &= labelled
        iou, f1 = metrics.mask_overlaps(predicted, self.masks, valid=labelled)
        has_labels = np.array([s.has_pixel_labels for s in self.samples])
        values, labels = self.pixels()
        return {
            "image_threshold": thresholds.image,
            "pixel_threshold": thresholds.pixel,
            "image": metrics.decision_metrics(flagged, self.labels),
            "pixel": metrics.decision_metrics(predicted if labelled is None else predicted[labelled], labels),
            "mask_iou": float(iou[has_labels].mean()) if has_labels.any() else float("nan"),
            "mask_f1": float(f1[has_labels].mean()) if has_labels.any() else float("nan"),
            "good_images_with_masks": int((predicted.any(axis=(1, 2)) & (self.labels == 0)).sum()),
            "image_f1_max": metrics.f1_max(self.scores, self.labels),
            "pixel_f1_max": metrics.f1_max(values, labels),
        }

    def per_type_metrics(self, seen_types: set[str]) -> dict[str, dict[str, float | bool]]:
        """Metrics of each defect type against the good images, marked ``seen`` if trained on; plus the mean
        over the unseen types as ``"unseen_mean"`` (the hard setting's headline number) when there are some."""
        types = sorted({s.defect_type for s in self.samples if s.is_anomalous})
        good = self.labels == 0
        labelled = self.labelled
        out: dict[str, dict[str, float | bool]] = {}
        for defect_type in types:
            keep = good | np.array([s.defect_type == defect_type for s in self.samples])
            maps, masks = self.anomaly_maps[keep], self.masks[keep]
            valid = None if labelled is None else labelled[keep]
            out[defect_type] = {
                "image_auroc": metrics.image_auroc(self.scores[keep], self.labels[keep]),
                "pixel_auroc": metrics.pixel_auroc(maps, masks, valid=valid),
                "pixel_aupro": metrics.aupro(maps, masks, valid=valid),
                "n_images": int(keep.sum() - good.sum()),
                "seen": defect_type in seen_types,
            }
        unseen = [v for v in out.values() if not v["seen"]]
        if unseen and len(unseen) < len(out):
            out["unseen_mean"] = {
                key: float(np.mean([v[key] for v in unseen])) for key in ("image_auroc", "pixel_auroc", "pixel_aupro")
            }
        return out


DECISIONS = (
    "good_images",
    "good_flagged",
    "good_flagged_rate",
    "recall",
    "image_f1",
    "f1_gap",
    "good_with_masks",
    "mask_iou",
)


def decision_summary(decisions: dict[str, Any]) -> dict[str, float | int]:
    """The verdicts a user acts on, from :meth:`Evaluation.decisions`, as flat numbers (:data:`DECISIONS`): good
    images flagged (count and rate), defect recall, image F1 at the threshold and its gap to the best F1 any
    threshold reaches, good images given a mask, and the mean per-image mask IoU."""
    image = decisions["image"]
    return {
        "good_images": int(image["fp"] + image["tn"]),
        "good_flagged": int(image["fp"]),
        "good_flagged_rate": float(image["fpr"]),
        "recall": float(image["recall"]),
        "image_f1": float(image["f1"]),
        "f1_gap": float(decisions["image_f1_max"] - image["f1"]),
        "good_with_masks": int(decisions["good_images_with_masks"]),
        "mask_iou": float(decisions["mask_iou"]),
    }


def evaluate(
    detector: AnomalyMapper, samples: Sequence[Sample], *, batch_size: int = 4, progress: bool = True
) -> Evaluation:
    """Score ``samples`` with ``detector``; the result does not depend on which other images are scored."""
    maps = []
    for start in progress_bar(
        range(0, len(samples), batch_size), desc="evaluating", unit="batch", disable=not progress
    ):
        maps.append(detector.anomaly_maps([s.path for s in samples[start : start + batch_size]], batch_size=batch_size))
    anomaly_maps = torch.cat(maps)
    size, resize = anomaly_maps.shape[-1], detector.resize
    masks = [
        mask_to_tensor(read_mask(s.mask_path), size, resize)
        if s.mask_path
        else torch.zeros(size, size, dtype=torch.bool)
        for s in samples
    ]
    valid = content_masks((image_shape(s.path) for s in samples), size, resize)
    return Evaluation(
        samples=tuple(samples),
        scores=image_scores(anomaly_maps, valid).numpy(),
        anomaly_maps=anomaly_maps.numpy(),
        masks=torch.stack(masks).numpy(),
        valid=None if valid is None else valid.numpy(),
        resize=resize,
    )


def full_resolution_metrics(evaluation: Evaluation) -> dict[str, float]:
    """Pixel metrics against the original masks at each image's original resolution, as the MVTec AD evaluation
    script computes them: each map is cropped to its image's content box and resized (bilinear) to the image's
    size, as :meth:`bgad.BGAD.predict` does. Images of different sizes are padded; padding never counts."""
    shapes = [image_shape(s.path) for s in evaluation.samples]
    height, width = max(h for h, _ in shapes), max(w for _, w in shapes)
    n = len(shapes)
    maps = np.zeros((n, height, width), np.float32)
    masks = np.zeros((n, height, width), bool)
    valid = np.zeros((n, height, width), bool)
    size = evaluation.anomaly_maps.shape[-1]
    for i, (sample, (h, w)) in enumerate(zip(evaluation.samples, shapes, strict=True)):
        top, left, box_h, box_w = content_box(h, w, size, evaluation.resize)
        content = torch.from_numpy(evaluation.anomaly_maps[i, top : top + box_h, left : left + box_w])
        maps[i, :h, :w] = resize_maps(content[None], (h, w))[0].numpy()
        if sample.mask_path is not None:
            masks[i, :h, :w] = read_mask(sample.mask_path)
        valid[i, :h, :w] = sample.has_pixel_labels
    return {
        "pixel_auroc": metrics.pixel_auroc(maps, masks, valid=valid),
        "pixel_aupro": metrics.aupro(maps, masks, valid=valid),
        "pixel_ap": metrics.pixel_ap(maps, masks, valid=valid),
    }
