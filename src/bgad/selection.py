"""Settings chosen by cross-validation over the user's own labels (``bgad fit --select``), never evaluation images.

The known anomalies and the training normals are each dealt into K folds (each defect type spread over them). Fold k
fits a detector on the other folds' normals and anomalies, with every configured level; its held-out anomalies and
held-out normals then rate every *scoring candidate*: a subset of the levels and a score temperature. Both are out of
fold for the whole model, flows included: rated on the normals its flows were trained on, a level looks better than it
is on new images, and the more so the more closely its flow fits them (docs/diagnosis.md). Candidates need no training
of their own: each level has its own flow, trained on its own loss, and the temperature only combines the levels' maps
(:mod:`bgad.method.scoring`). A candidate's estimate is the mean over folds of image AUROC, pixel AUROC and AUPRO on the
held-out data (their mean is its criterion). A few held-out defects make the estimates noisy, so another candidate
replaces the configured setting only when its criterion is higher by more than :data:`MIN_GAIN` and by more than the
standard error of its per-fold differences to the configured one; the highest such candidate wins. The final model is
then fitted on every label with the chosen setting.

The cost is K fits (of the configured levels, each on (K - 1) / K of the normals), plus scoring: what it measured is in
docs/diagnosis.md.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .config import BGADConfig
from .data.images import ImageSource, mask_to_tensor
from .detector import BGAD
from .errors import BGADError
from .method.fitting import MaskSource, masks_for, model_inputs
from .method.scoring import anomaly_map, calibrate, image_scores
from .metrics import aupro, image_auroc, pixel_auroc

TEMPERATURES = (1.0, 2.0, 4.0)  # score temperatures tried for two or more levels (one level: T changes no ranking)
CRITERIA = ("image_auroc", "pixel_auroc", "pixel_aupro")  # a candidate's estimate: their mean
MIN_GAIN = 0.002  # the smallest gain in the criterion that moves the choice away from the configured setting
MAX_PIXEL_NORMALS = 256  # held-out normals whose maps enter a fold's pixel metrics (seeded sample): bounds the cost


@dataclass(frozen=True)
class Candidate:
    """A scoring setting: which of the configured levels are combined, and with which score temperature."""

    strides: tuple[int, ...]
    score_temperature: float

    def apply(self, config: BGADConfig) -> BGADConfig:
        """``config`` with this candidate's levels and temperature."""
        model = {"strides": list(self.strides), "score_temperature": self.score_temperature}
        return BGADConfig.from_dict({"model": model}, base=config)

    def describe(self) -> str:
        levels = "+".join(str(s) for s in self.strides)
        return f"strides {levels}" + (f", T = {self.score_temperature:g}" if len(self.strides) > 1 else "")


@dataclass(frozen=True)
class Estimate:
    """A candidate's cross-validated metrics: one dict of :data:`CRITERIA` per fold."""

    candidate: Candidate
    per_fold: tuple[dict[str, float], ...]

    def mean(self, key: str) -> float:
        return statistics.fmean(fold[key] for fold in self.per_fold)

    @property
    def per_fold_criterion(self) -> list[float]:
        return [statistics.fmean(fold[key] for key in CRITERIA) for fold in self.per_fold]

    @property
    def criterion(self) -> float:
        """The mean over :data:`CRITERIA` of their means over folds: what the selection maximizes."""
        return statistics.fmean(self.per_fold_criterion)

    def beats(self, configured: Estimate) -> bool:
        """Higher than ``configured`` by more than :data:`MIN_GAIN` and the standard error of the per-fold
        differences."""
        gains = [a - b for a, b in zip(self.per_fold_criterion, configured.per_fold_criterion, strict=True)]
        error = statistics.stdev(gains) / len(gains) ** 0.5
        return statistics.fmean(gains) > max(MIN_GAIN, error)


@dataclass(frozen=True)
class Selection:
    """What :func:`select_settings` chose (``config``), from which estimates, at what cost."""

    config: BGADConfig
    chosen: Candidate
    estimates: tuple[Estimate, ...]
    folds: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The record kept in ``run.json`` (``selection``): every candidate's estimate, the choice, the cost."""
        return {
            "folds": self.folds,
            "criteria": list(CRITERIA),
            "chosen": self.chosen.describe(),
            "seconds": round(self.seconds, 1),
            "candidates": [
                {
                    "strides": list(e.candidate.strides),
                    "score_temperature": e.candidate.score_temperature,
                    **{key: round(e.mean(key), 4) for key in CRITERIA},
                    "criterion": round(e.criterion, 4),
                    "criterion_per_fold": [round(value, 4) for value in e.per_fold_criterion],
                }
                for e in self.estimates
            ],
        }


def describe_selection(record: dict[str, Any]) -> str:
    """One sentence for the report from a :meth:`Selection.to_dict` record."""
    rated = "; ".join(
        f"{Candidate(tuple(c['strides']), c['score_temperature']).describe()}: {c['criterion']:.3f}"
        for c in record["candidates"]
    )
    return (
        f"Settings chosen by {record['folds']}-fold cross-validation over the known anomalies (never the evaluation "
        f"images), in {record['seconds']:.0f} s: {record['chosen']}. Each candidate's mean of image AUROC, pixel "
        f"AUROC and AUPRO on held-out known anomalies and out-of-fold training normals: {rated}."
    )


def scoring_candidates(config: BGADConfig) -> list[Candidate]:
    """The configured setting first, then every non-empty subset of its levels (with each of :data:`TEMPERATURES`
    when it has two or more levels)."""
    model = config.model
    candidates = [Candidate(tuple(model.strides), model.score_temperature)]
    for size in range(1, len(model.strides) + 1):
        for strides in itertools.combinations(model.strides, size):
            temperatures = TEMPERATURES if size > 1 else (model.score_temperature,)
            candidates += [Candidate(strides, t) for t in temperatures]
    return list(dict.fromkeys(candidates))


def deal_folds(groups: Sequence[str], n_folds: int, seed: int) -> np.ndarray:
    """Fold of each image: within each group (e.g. defect type), a seeded order dealt round-robin, continuing
    where the previous group stopped, so every fold gets about the same number of each group."""
    rng = np.random.default_rng(seed)
    folds = np.empty(len(groups), dtype=np.int64)
    position = 0
    for group in sorted(set(groups)):
        members = rng.permutation([i for i, g in enumerate(groups) if g == group])
        for i in members:
            folds[i] = position % n_folds
            position += 1
    return folds


def select_settings(
    normal_images: Sequence[ImageSource],
    anomaly_images: Sequence[ImageSource],
    anomaly_masks: Sequence[MaskSource],
    config: BGADConfig,
    *,
    folds: int = 3,
    groups: Sequence[str] | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> Selection:
    """Choose among :func:`scoring_candidates` by ``folds``-fold cross-validation over the known anomalies
    (``groups``: their defect types, for stratified folds) and the training normals; return the chosen config and
    every estimate."""
    masks = masks_for(anomaly_images, anomaly_masks)
    if config.model.tile_size:
        raise BGADError("--select does not work with tiling (model.tile_size) yet")
    if len(anomaly_images) < 2:
        raise BGADError(f"--select needs at least 2 known anomalies with masks, got {len(anomaly_images)}")
    if folds < 2:
        raise BGADError(f"--select needs at least 2 folds, got {folds}")
    if groups is not None and len(groups) != len(masks):
        raise BGADError(f"got {len(groups)} defect types for {len(masks)} anomaly images")
    folds = min(folds, len(anomaly_images), len(normal_images))
    start = time.perf_counter()
    anomaly_fold = deal_folds(list(groups) if groups is not None else [""] * len(masks), folds, config.train.seed)
    normal_fold = deal_folds([""] * len(normal_images), folds, config.train.seed)
    candidates = scoring_candidates(config)
    rated: list[list[dict[str, float]]] = [[] for _ in candidates]
    # What every fold rates with, made once: the images' content on the model's input and the masks there.
    inputs = model_inputs(normal_images, anomaly_images, masks, config)
    size, resize = config.model.image_size, config.model.resize
    input_masks = torch.stack([mask_to_tensor(m.numpy(), size, resize) for m in masks])
    rng = np.random.default_rng(config.train.seed)
    for k in range(folds):
        if progress:
            print(f"bgad: selection fold {k + 1} of {folds}", file=sys.stderr)
        train = np.flatnonzero(anomaly_fold != k)
        held = np.flatnonzero(anomaly_fold == k)
        normals = np.flatnonzero(normal_fold != k)
        held_normals = np.flatnonzero(normal_fold == k)
        detector = BGAD(config, device=device).fit(
            [normal_images[i] for i in normals],
            [anomaly_images[i] for i in train],
            [masks[i].numpy() for i in train],
            progress=progress,
        )
        held_out = _HeldOut(
            tuple(config.model.strides),
            detector.level_log_probs([normal_images[i] for i in held_normals]),
            detector.level_log_probs([anomaly_images[i] for i in held]),
            input_masks[held],
            _rows(inputs.normal_valid, held_normals),
            _rows(inputs.anomaly_valid, held),
            np.sort(rng.choice(len(held_normals), min(len(held_normals), MAX_PIXEL_NORMALS), replace=False)),
        )
        for ratings, candidate in zip(rated, candidates, strict=True):
            ratings.append(held_out.rate(candidate, config))
    estimates = tuple(Estimate(c, tuple(r)) for c, r in zip(candidates, rated, strict=True))
    better = [e for e in estimates[1:] if e.beats(estimates[0])]
    best = max(better, key=lambda e: e.criterion) if better else estimates[0]
    return Selection(best.candidate.apply(config), best.candidate, estimates, folds, time.perf_counter() - start)


def _rows(valid: Tensor | None, rows: np.ndarray) -> Tensor | None:
    return None if valid is None else valid[torch.from_numpy(rows)]


@dataclass(frozen=True)
class _HeldOut:
    """One fold's per-level log-likelihood maps of its held-out normals and held-out anomalies."""

    strides: tuple[int, ...]
    normal_log_probs: list[Tensor]
    anomaly_log_probs: list[Tensor]
    anomaly_masks: Tensor  # (A, S, S) bool, on the model's input
    normal_valid: Tensor | None
    anomaly_valid: Tensor | None
    pixel_normals: np.ndarray  # indices (among the held-out normals) of those whose maps enter the pixel metrics

    def rate(self, candidate: Candidate, config: BGADConfig) -> dict[str, float]:
        """Image AUROC (every held-out normal against the held-out anomalies), pixel AUROC and AUPRO (a sample of them
        and the held-out anomalies) of ``candidate``'s maps, calibrated on the normals as a fit would."""
        levels = [self.strides.index(s) for s in candidate.strides]
        normal = [self.normal_log_probs[i] for i in levels]
        anomalous = [self.anomaly_log_probs[i] for i in levels]
        size, t = (config.model.image_size,) * 2, candidate.score_temperature
        level_max, normal_max = calibrate(normal, size, self.normal_valid, t)
        normal_maps = anomaly_map(normal, level_max, normal_max, size, t)
        anomaly_maps = anomaly_map(anomalous, level_max, normal_max, size, t)
        scores = torch.cat(
            [image_scores(normal_maps, self.normal_valid), image_scores(anomaly_maps, self.anomaly_valid)]
        )
        labels = np.r_[np.zeros(len(normal_maps)), np.ones(len(anomaly_maps))]
        sample = torch.from_numpy(self.pixel_normals)
        maps = torch.cat([normal_maps[sample], anomaly_maps]).numpy()
        masks = torch.cat([torch.zeros_like(normal_maps[sample], dtype=torch.bool), self.anomaly_masks]).numpy()
        valid = None
        if self.normal_valid is not None and self.anomaly_valid is not None:
            valid = torch.cat([self.normal_valid[sample], self.anomaly_valid]).numpy()
        return {
            "image_auroc": image_auroc(scores.numpy(), labels),
            "pixel_auroc": pixel_auroc(maps, masks, valid=valid),
            "pixel_aupro": aupro(maps, masks, valid=valid),
        }
