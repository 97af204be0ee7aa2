"""What a fit does around the training loop: the training images as the model sees them (tiles for a tiled model),
their features normalized and labelled as training vectors (the normals' cross-fitted, :mod:`bgad.method.crossfit`),
the source of synthetic anomalies, and the score calibration and thresholds set from the normals' out-of-fold maps.
:class:`bgad.BGAD` calls these in this order."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..config import BGADConfig
from ..data.images import (
    ImageSource,
    binarize_mask,
    content_masks,
    image_shape,
    mask_to_tensor,
    read_mask,
    square_mask,
)
from ..data.synthetic_pool import SyntheticAnomalies
from ..errors import BGADError
from .crossfit import calibration_folds
from .features import extract_features
from .model import BGADModel
from .scoring import anomaly_map, calibrate, image_scores
from .thresholds import Thresholds, fit_thresholds
from .tiling import image_max, tile_images
from .training import LevelData, cached_log_prob_maps, level_data, vector_labels

MaskSource = str | Path | np.ndarray


@dataclass(frozen=True)
class ModelInputs:
    """Training or calibration images as the model sees them: the images, or their tiles for a tiled model.

    ``*_valid`` (N, S, S): the pixels that count on the model's input (a letterboxed image's content, a tile's
    core), None for all; ``*_owner``: the image each tile came from (None: not tiled)."""

    normals: list[ImageSource]
    anomalies: list[ImageSource]
    masks: list[Tensor]
    normal_valid: Tensor | None
    anomaly_valid: Tensor | None
    normal_owner: np.ndarray | None = None
    anomaly_owner: np.ndarray | None = None


def model_inputs(
    normal_images: Sequence[ImageSource], anomaly_images: Sequence[ImageSource], masks: list[Tensor], config: BGADConfig
) -> ModelInputs:
    model = config.model
    if not model.tile_size:
        return ModelInputs(
            list(normal_images),
            list(anomaly_images),
            masks,
            content_masks((image_shape(image) for image in normal_images), model.image_size, model.resize),
            content_masks((tuple(mask.shape) for mask in masks), model.image_size, model.resize),
        )
    if config.train.foreground not in ("auto", "full"):
        raise BGADError("train.foreground as a folder of masks does not work with tiling (model.tile_size)")
    cut = functools.partial(
        tile_images, tile_size=model.tile_size, overlap=model.tile_overlap, image_size=model.image_size
    )
    normals, anomalies = cut(normal_images, None), cut(anomaly_images, masks)
    return ModelInputs(
        normals.images,
        anomalies.images,
        anomalies.masks,
        normals.valid,
        anomalies.valid,
        normals.owner,
        anomalies.owner,
    )


def training_vectors(
    model: BGADModel, inputs: ModelInputs, config: BGADConfig, progress: bool, *, fit_normalization: bool = True
) -> list[LevelData]:
    """Extract every training image's features once; fit the normalization (unless the model has one to keep);
    label every vector. The normals' vectors are cross-fitted (:mod:`bgad.method.crossfit`) unless
    ``threshold.calibration_folds`` < 2."""
    features = extract_features(
        model.extractor,
        inputs.normals + inputs.anomalies,
        image_size=config.model.image_size,
        batch_size=config.train.extract_batch_size,
        resize=config.model.resize,
        progress=progress,
    )
    n = len(inputs.normals)
    if fit_normalization:
        model.fit_normalization([f[:n] for f in features])
    folds = calibration_folds(n, config.threshold.calibration_folds, config.train.seed, inputs.normal_owner)
    labels = [None] * n + [square_mask(mask, config.model.resize) for mask in inputs.masks]
    levels = []
    for level, f in zip(model.levels, features, strict=True):
        normals = level.vectors(f[:n]) if folds is None else level.cross_fitted_vectors(f[:n], folds)
        vectors = torch.cat([normals, level.vectors(f[n:])])
        levels.append(level_data(vectors, vector_labels(labels, level.grid), n))
    return levels


def synthetic_source(
    model: BGADModel, inputs: ModelInputs, config: BGADConfig
) -> Callable[[int], list[LevelData] | None] | None:
    """The training loop's source of synthetic-anomaly vectors, or None when synthesis is off or impossible.
    Only the known anomalies with defect pixels are pasted (a tile of a defect image may have none)."""
    if config.train.synthesis == "none":
        return None
    defects = [(image, mask) for image, mask in zip(inputs.anomalies, inputs.masks, strict=True) if mask.any()]
    pool = SyntheticAnomalies(
        config.train.synthesis,
        inputs.normals,
        [image for image, _ in defects],
        [mask.numpy() for _, mask in defects],
        repeats=config.train.synthetic_repeats,
        foreground=config.train.foreground,
        seed=config.train.seed,
    )
    if not pool.active:
        return None

    def draw(meta_epoch: int) -> list[LevelData] | None:
        images, labels = pool.draw(meta_epoch)
        if not images:
            return None
        features = extract_features(
            model.extractor,
            images,
            image_size=config.model.image_size,
            batch_size=config.train.extract_batch_size,
            resize=config.model.resize,
            progress=False,
        )
        labels_t = [square_mask(torch.from_numpy(label), config.model.resize) for label in labels]
        return [
            level_data(level.vectors(f), vector_labels(labels_t, level.grid), 0)
            for level, f in zip(model.levels, features, strict=True)
        ]

    return draw


@torch.inference_mode()
def cached_maps(model: BGADModel, levels: list[LevelData], images: slice) -> list[Tensor]:
    """Per-level log-likelihood maps (on the CPU) of the training ``images``, from the training vectors' cache."""
    return [cached_log_prob_maps(level, data, images).cpu() for level, data in zip(model.levels, levels, strict=True)]


def set_calibration(
    model: BGADModel,
    normal_log_probs: list[Tensor],
    known_log_probs: list[Tensor] | None,
    inputs: ModelInputs,
    config: BGADConfig,
    *,
    target_fpr: float | None = None,
) -> tuple[Thresholds, np.ndarray, np.ndarray]:
    """Set the model's score calibration from the normals' per-level log-likelihood maps (on the CPU, wherever the
    model is), then return the decision thresholds (with the known anomalies' maps and masks, if any), the
    normals' image scores and the known anomalies' (empty without them)."""
    size = (config.model.image_size, config.model.image_size)
    resize, temperature = config.model.resize, config.model.score_temperature
    level_max, normal_max = calibrate(normal_log_probs, size, inputs.normal_valid, temperature)
    model.normal_max.copy_(normal_max)
    for level, maximum in zip(model.levels, level_max, strict=True):
        level.log_prob_max.copy_(maximum)
    normal_maps = anomaly_map(normal_log_probs, level_max, normal_max, size, temperature)
    normal_scores = image_max(image_scores(normal_maps, inputs.normal_valid).numpy(), inputs.normal_owner)
    known_maps = known_masks = None
    known_scores = np.zeros(0)
    if known_log_probs is not None:
        known_maps = anomaly_map(known_log_probs, level_max, normal_max, size, temperature)
        known_masks = torch.stack([mask_to_tensor(m.numpy(), size[0], resize) for m in inputs.masks])
        known_scores = image_max(image_scores(known_maps, inputs.anomaly_valid).numpy(), inputs.anomaly_owner)
    thresholds = fit_thresholds(
        normal_maps,
        known_maps,
        known_masks,
        config.threshold,
        normal_valid=inputs.normal_valid,
        anomaly_valid=inputs.anomaly_valid,
        normal_owner=inputs.normal_owner,
        anomaly_owner=inputs.anomaly_owner,
        target_fpr=target_fpr,
    )
    return thresholds, normal_scores.astype(np.float64), known_scores.astype(np.float64)


def masks_for(anomaly_images: Sequence[ImageSource], anomaly_masks: Sequence[MaskSource]) -> list[Tensor]:
    """The masks of the anomaly images as boolean tensors, one per image (paths are read, arrays binarized)."""
    if len(anomaly_images) != len(anomaly_masks):
        raise BGADError(f"got {len(anomaly_images)} anomaly images but {len(anomaly_masks)} masks")
    return [_mask_tensor(mask) for mask in anomaly_masks]


def _mask_tensor(mask: MaskSource) -> Tensor:
    """A boolean (H, W) mask from a path or a 2-D array, by :func:`bgad.data.images.binarize_mask`'s rule."""
    if not isinstance(mask, np.ndarray):
        return torch.from_numpy(read_mask(mask))
    if mask.ndim != 2:
        raise BGADError(f"a mask must be a 2-D array, got shape {mask.shape}")
    return torch.from_numpy(binarize_mask(mask))
