"""The estimator users call: ``BGAD(config).fit(normal_images, anomaly_images, anomaly_masks)``.

It follows scikit-learn's contract: ``__init__`` only stores the configuration and the device (like ``n_jobs``,
where the work runs, not what it learns: never saved with the model), ``fit`` validates and returns ``self``, and
fitted state ends with an underscore.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .config import BGADConfig, ModelConfig, TrainConfig
from .data.images import (
    BLACK,
    Color,
    ImageSource,
    binarize_mask,
    content_box,
    content_masks,
    image_shape,
    image_to_tensor,
    mask_to_tensor,
    read_image,
    read_mask,
    square_mask,
)
from .data.synthetic_pool import SyntheticAnomalies
from .devices import resolve_device
from .distributed import current
from .errors import BGADError, NotFittedError
from .method.crossfit import calibration_folds
from .method.features import extract_features, image_batches
from .method.model import BGADModel
from .method.scoring import anomaly_map, calibrate, image_scores, resize_maps
from .method.thresholds import NormalTail, Thresholds, fit_thresholds, normalized_score
from .method.tiling import image_max, input_grid, stitched_map, tile_images
from .method.training import LevelData, cached_log_prob_maps, level_data, train_flows, vector_labels
from .model_checks import finite_maps
from .model_files import load_model, save_model

MaskSource = str | Path | np.ndarray


@dataclass(frozen=True)
class Prediction:
    """The result for one image; maps and masks are at the image's original resolution."""

    score: float  # maximum of the anomaly map (bgad.method.scoring): at the model's input size, tiled: at full size
    anomaly_map: np.ndarray  # (H, W) float32
    mask: np.ndarray  # (H, W) bool: anomaly_map above the pixel threshold; empty when the image is judged good
    is_anomalous: bool  # score above the image threshold
    normalized_score: float  # the score in [0, 1], 0.5 at the image threshold (bgad.method.thresholds.normalized_score)
    # The estimated share of good parts scoring this high or higher (out of sample, bgad.method.thresholds.NormalTail):
    # 0.001 is 1 good part in 1,000; None when the model stores no normal scores.
    normal_share: float | None = None


class Detector(Protocol):
    """A fitted detector on any engine, as prediction and serving use it: :class:`BGAD` (torch) or
    :class:`bgad.export.OnnxDetector` (onnxruntime, OpenVINO). The thresholds are plain attributes that a caller
    may replace (``--image-threshold``)."""

    thresholds_: Thresholds
    normal_scores_: np.ndarray | None

    @property
    def engine(self) -> str: ...

    @property
    def configuration(self) -> BGADConfig: ...

    @property
    def resize(self) -> str: ...

    def anomaly_maps(self, images: Sequence[ImageSource], *, batch_size: int = ...) -> Tensor: ...

    def predict(self, image: ImageSource) -> Prediction: ...

    def predict_batch(
        self, images: Sequence[ImageSource], *, batch_size: int = ..., mask_every_image: bool = ...
    ) -> list[Prediction]: ...


class BGAD:
    """Supervised anomaly detector: BGAD flows on frozen backbone features.

    Images are paths, PIL images or uint8 arrays; masks are paths or 2-D arrays. A tiny example (random "normal"
    images and one defect with its mask; real use: ``load_config("default")`` and hundreds of images):

        >>> import numpy as np
        >>> from bgad import BGAD, BGADConfig
        >>> config = BGADConfig.from_dict(
        ...     {"model": {"image_size": 64, "n_coupling_blocks": 2}, "train": {"meta_epochs": 3, "fiber_batch": 256}}
        ... )
        >>> rng = np.random.default_rng(0)
        >>> normals = [rng.integers(100, 140, (64, 64, 3), dtype=np.uint8) for _ in range(6)]
        >>> defect, mask = normals[0].copy(), np.zeros((64, 64), dtype=bool)
        >>> defect[20:30, 20:30], mask[20:30, 20:30] = 255, True
        >>> detector = BGAD(config).fit(normals[1:], [defect], [mask], progress=False)
        >>> result = detector.predict(defect)
        >>> result.anomaly_map.shape, result.mask.dtype
        ((64, 64), dtype('bool'))
        >>> bool(result.score > detector.predict(normals[1]).score)
        True

    ``device`` is where :meth:`fit` trains and the fitted model then runs: ``"cpu"`` (default), ``"cuda"`` or
    ``"auto"`` (the GPU when torch sees one). Under ``torchrun``, :meth:`fit` trains data-parallel over the
    processes (:mod:`bgad.distributed`) once the process group is initialized.
    """

    def __init__(self, config: BGADConfig | None = None, *, device: str = "cpu"):
        self.config = config
        self.device = device

    @property
    def _config(self) -> BGADConfig:
        return self.config or BGADConfig()

    engine = "torch"  # what runs the model (Detector protocol)

    @property
    def configuration(self) -> BGADConfig:
        """The configuration in force: :attr:`config`, or the defaults when it is None."""
        return self._config

    def fit(
        self,
        normal_images: Sequence[ImageSource],
        anomaly_images: Sequence[ImageSource] = (),
        anomaly_masks: Sequence[MaskSource] = (),
        *,
        log_path: str | Path | None = None,
        checkpoint: str | Path | None = None,
        progress: bool = True,
    ) -> BGAD:
        """Train on normal images and (optionally) a few anomalies with their pixel masks.

        Sets ``model_`` (a :class:`BGADModel`), ``thresholds_`` (image and pixel decision thresholds, see
        :mod:`bgad.method.thresholds`), ``normal_scores_`` (the training normals' out-of-fold image scores,
        :mod:`bgad.method.crossfit`), ``known_scores_`` (the known anomalies'), ``history_`` (one record per meta-epoch)
        and ``train_seconds_``; until the detector is saved, ``normal_log_probs_`` holds the training normals'
        out-of-fold log-likelihood maps, one (N, h, w) tensor per level, from which the calibration was set.
        ``checkpoint`` is a folder where the training state is saved after every meta-epoch; if it holds one, fit
        resumes from it and ends with the same model as an uninterrupted fit (same configuration; on another
        device, the same up to float rounding). In data-parallel training every process calls fit with the same
        arguments; process 0 alone reads and writes ``checkpoint`` and ``log_path``, and every process ends with
        the same fitted detector.
        """
        config = self._config
        self._train(
            lambda: BGADModel(config.model, seed=config.train.seed),
            config.train,
            normal_images,
            anomaly_images,
            anomaly_masks,
            fit_normalization=True,
            log_path=log_path,
            checkpoint=checkpoint,
            progress=progress,
        )
        return self

    def update(
        self,
        normal_images: Sequence[ImageSource],
        anomaly_images: Sequence[ImageSource],
        anomaly_masks: Sequence[MaskSource],
        *,
        new_normal_images: Sequence[ImageSource] = (),
        meta_epochs: int | None = None,
        normal_fraction: float | None = None,
        log_path: str | Path | None = None,
        checkpoint: str | Path | None = None,
        progress: bool = True,
    ) -> BGAD:
        """A new detector trained on from this one's flows with a short schedule, for newly labelled images: give
        every labelled defect (the old known anomalies and the new ones), the normals this detector trained on and
        any new good images.

        It keeps this detector's feature normalization, skips the normal-only phase and the warm-up, and runs
        ``meta_epochs`` (default ``train.update_meta_epochs``) BG-SPP meta-epochs with the cosine schedule on a
        sample of ``normal_fraction`` (default ``train.update_normal_fraction``, seeded by ``train.seed``) of
        ``normal_images``, all of ``new_normal_images`` and every defect; then the score calibration and
        thresholds are set again on those normals. This detector is left as it was. ``log_path`` and
        ``checkpoint`` work as in :meth:`fit`.
        """
        config = self._config
        fraction = config.train.update_normal_fraction if normal_fraction is None else normal_fraction
        if not 0 < fraction <= 1:
            raise BGADError(f"normal_fraction must be in (0, 1], got {fraction}")
        schedule = dataclasses.replace(
            config.train,
            meta_epochs=meta_epochs or config.train.update_meta_epochs,
            normal_only_meta_epochs=0,
            warmup_meta_epochs=0,
        )
        parent = self._check_is_fitted()
        count = max(1, round(fraction * len(normal_images))) if normal_images else 0
        sample = sorted(np.random.default_rng(config.train.seed).choice(len(normal_images), count, replace=False))
        updated = BGAD(config, device=self.device)
        updated._train(
            lambda: copy.deepcopy(parent),
            schedule,
            [normal_images[i] for i in sample] + list(new_normal_images),
            anomaly_images,
            anomaly_masks,
            fit_normalization=False,
            log_path=log_path,
            checkpoint=checkpoint,
            progress=progress,
        )
        return updated

    def _train(
        self,
        make_model: Callable[[], BGADModel],
        schedule: TrainConfig,
        normal_images: Sequence[ImageSource],
        anomaly_images: Sequence[ImageSource],
        anomaly_masks: Sequence[MaskSource],
        *,
        fit_normalization: bool,
        log_path: str | Path | None = None,
        checkpoint: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        """Train the flows of ``make_model()`` (made under the fit's seed) with ``schedule`` on :attr:`device` and
        calibrate the model: the body of :meth:`fit` and :meth:`update`."""
        config = self._config
        if len(normal_images) == 0:
            raise BGADError("training needs at least one normal image")
        inputs = _model_inputs(normal_images, anomaly_images, masks_for(anomaly_images, anomaly_masks), config)
        device, parallel = resolve_device(self.device), current()
        progress = progress and (parallel is None or parallel.is_main)
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):  # seeded for repeatable fits; the caller's torch RNG is left as it was
            torch.manual_seed(config.train.seed)
            model = make_model().to(device)
            levels = _training_vectors(model, inputs, config, progress, fit_normalization=fit_normalization)
            self.history_ = train_flows(
                model.levels,
                levels,
                schedule,
                config.loss,
                synthetic=_synthetic_source(model, inputs, config),
                log_path=Path(log_path) if log_path is not None else None,
                checkpoint=Path(checkpoint) if checkpoint is not None else None,
                config=config.to_dict(),
                progress=progress,
                parallel=parallel,
            )
            self.normal_log_probs_ = _cached_maps(model, levels, slice(0, len(inputs.normals)))
            known = _cached_maps(model, levels, slice(len(inputs.normals), None)) if inputs.masks else None
            self.thresholds_, self.normal_scores_, self.known_scores_ = _set_calibration(
                model, self.normal_log_probs_, known, inputs, config
            )
        self.model_ = model
        self.train_seconds_ = time.perf_counter() - start

    @property
    def resize(self) -> str:
        """How images are fitted to the square model input (:attr:`bgad.config.ModelConfig.resize`)."""
        return self._config.model.resize

    def _check_is_fitted(self) -> BGADModel:
        if not hasattr(self, "model_"):
            raise NotFittedError("this BGAD detector is not fitted yet: call fit() or BGAD.load() first")
        return self.model_

    def to(self, device: str | torch.device) -> BGAD:
        """Move the fitted model to ``device`` (``"cpu"``, ``"cuda"``, ``"auto"``), which becomes :attr:`device`;
        images follow it automatically."""
        self._check_is_fitted().to(resolve_device(device))
        self.device = device
        return self

    @torch.inference_mode()
    def anomaly_maps(self, images: Sequence[ImageSource], *, batch_size: int = 4) -> Tensor:
        """Anomaly maps (N, S, S) at the model's input size, on the CPU; higher = more anomalous. With
        ``resize="pad"`` they cover the whole canvas: only the :func:`bgad.data.images.content_box` is meaningful.
        A tiled model's are its stitched maps max-pooled to S x S (:func:`bgad.method.tiling.input_grid`)."""
        model = self._check_is_fitted()
        run = _on_device(model)
        if model.config.tile_size:
            return tiled_input_maps(run, images, model.config, batch_size, model.extractor.pad_color)
        return torch.cat([run(batch) for batch in self._batches(images, batch_size, model)])

    def _batches(self, images: Sequence[ImageSource], batch_size: int, model: BGADModel) -> Iterator[Tensor]:
        """Input batches (B, 3, S, S) as ``model`` sees them: its input size, resize mode and pad colour."""
        return image_batches(
            images,
            image_size=model.config.image_size,
            batch_size=batch_size,
            resize=self.resize,
            fill=model.extractor.pad_color,
        )

    def predict(self, image: ImageSource) -> Prediction:
        """Score one image: its score, anomaly map and defect mask at the image's own resolution."""
        return self.predict_batch([image])[0]

    def predict_batch(
        self, images: Sequence[ImageSource], *, batch_size: int = 4, mask_every_image: bool = False
    ) -> list[Prediction]:
        """:meth:`predict` for many images, ``batch_size`` at a time; ``mask_every_image`` gives images judged
        good their above-threshold pixels too (by default their mask is empty, as the verdict says)."""
        model = self._check_is_fitted()
        return predict_images(
            _on_device(model),
            images,
            model.config,
            self.thresholds_,
            self.normal_scores_,
            batch_size,
            fill=model.extractor.pad_color,
            mask_every_image=mask_every_image,
        )

    @torch.inference_mode()
    def calibrate(
        self,
        normal_images: Sequence[ImageSource],
        anomaly_images: Sequence[ImageSource] = (),
        anomaly_masks: Sequence[MaskSource] = (),
        *,
        target_fpr: float | None = None,
        batch_size: int = 4,
    ) -> BGAD:
        """A new detector with the same flows whose score calibration and thresholds are set again from
        ``normal_images`` (good images it has not trained on, ideally from the line) and, optionally, defects with
        masks; ``target_fpr`` sets the image threshold that flags that fraction of those good images. It runs where
        the fitted model is; this detector is left as it was."""
        if len(normal_images) == 0:
            raise BGADError("calibration needs at least one good image")
        model = copy.deepcopy(self._check_is_fitted())
        config = self._config
        inputs = _model_inputs(normal_images, anomaly_images, masks_for(anomaly_images, anomaly_masks), config)
        known = _level_log_probs(model, self._batches(inputs.anomalies, batch_size, model)) if inputs.masks else None
        normal = _level_log_probs(model, self._batches(inputs.normals, batch_size, model))
        calibrated = BGAD(config, device=self.device)
        calibrated.model_, calibrated.normal_log_probs_ = model, normal
        calibrated.thresholds_, calibrated.normal_scores_, calibrated.known_scores_ = _set_calibration(
            model, normal, known, inputs, config, target_fpr=target_fpr
        )
        calibrated.train_seconds_ = self.train_seconds_
        return calibrated

    @torch.inference_mode()
    def level_log_probs(self, images: Sequence[ImageSource], *, batch_size: int = 4) -> list[Tensor]:
        """Per-level log-likelihood maps (the flows' output before scoring), one (N, h, w) tensor per level on the
        CPU: what :mod:`bgad.method.scoring` turns into anomaly maps, for rescoring with other levels or
        temperatures."""
        model = self._check_is_fitted()
        return _level_log_probs(model, self._batches(images, batch_size, model))

    def save(self, directory: str | Path) -> None:
        """Write ``model.safetensors`` and ``model.json`` into ``directory`` (no pickle)."""
        model = self._check_is_fitted()
        save_model(
            model,
            self._config,
            self.thresholds_,
            Path(directory),
            normal_scores=self.normal_scores_,
            known_scores=self.known_scores_,
            train_seconds=self.train_seconds_,
        )

    @classmethod
    def load(cls, directory: str | Path) -> BGAD:
        """Load a detector saved with :meth:`save`."""
        saved = load_model(Path(directory))
        detector = cls(saved.config)
        detector.model_ = saved.model
        detector.thresholds_ = saved.thresholds
        detector.normal_scores_ = saved.normal_scores
        detector.known_scores_ = saved.known_scores
        detector.train_seconds_ = saved.train_seconds
        return detector


def _level_log_probs(model: BGADModel, batches: Iterator[Tensor]) -> list[Tensor]:
    device = model.normal_max.device
    per_batch = [model.level_log_probs(model.extractor(batch.to(device))) for batch in batches]
    return [torch.cat(level).cpu() for level in zip(*per_batch, strict=True)]


def _on_device(model: BGADModel) -> Callable[[Tensor], Tensor]:
    """The model as a function of CPU batches: run on its device, maps back on the CPU."""
    device = model.normal_max.device
    return lambda batch: finite_maps(model(batch.to(device)).cpu())


@torch.inference_mode()
def predict_images(
    anomaly_maps: Callable[[Tensor], Tensor],
    images: Sequence[ImageSource],
    config: ModelConfig,
    thresholds: Thresholds,
    normal_scores: np.ndarray | None,
    batch_size: int,
    *,
    fill: Color = BLACK,
    mask_every_image: bool = False,
) -> list[Prediction]:
    """Predictions for ``images`` given a function from input batches (B, 3, S, S) to anomaly maps (B, S, S), with
    ``normal_scores`` (out-of-sample scores of good images) for the normalized score and the normal share.

    Shared by every inference engine (torch here, onnxruntime in :mod:`bgad.export`). Each map is cropped to the
    image's content box (the whole map with ``resize="stretch"``), scored, and resized to the image's resolution;
    a tiled model's tiles are stitched at the image's resolution and scored there. An image judged good gets an
    empty mask unless ``mask_every_image``.
    """
    predictions = []
    tail = None if normal_scores is None else NormalTail(normal_scores)
    for start in range(0, len(images), batch_size):
        pictures = [read_image(image) for image in images[start : start + batch_size]]
        for score, full in _scored_maps(anomaly_maps, pictures, config, batch_size, fill):
            is_anomalous = score > thresholds.image
            predictions.append(
                Prediction(
                    score=score,
                    anomaly_map=full,
                    mask=(full > thresholds.pixel) & (is_anomalous or mask_every_image),
                    is_anomalous=is_anomalous,
                    normalized_score=normalized_score(score, thresholds.image, tail),
                    normal_share=None if tail is None else tail.share(score),
                )
            )
    return predictions


def _scored_maps(
    anomaly_maps: Callable[[Tensor], Tensor],
    pictures: Sequence[Image.Image],
    config: ModelConfig,
    batch_size: int,
    fill: Color,
) -> list[tuple[float, np.ndarray]]:
    """(image score, anomaly map at the image's resolution) of each picture."""
    size = config.image_size
    if config.tile_size:
        tiling = {"tile_size": config.tile_size, "overlap": config.tile_overlap, "batch_size": batch_size}
        full_maps = [stitched_map(anomaly_maps, p, image_size=size, fill=fill, **tiling) for p in pictures]
        return [(float(full.max()), full.numpy()) for full in full_maps]
    maps = anomaly_maps(torch.stack([image_to_tensor(p, size, config.resize, fill) for p in pictures]))
    out = []
    for picture, scaled in zip(pictures, maps, strict=True):
        top, left, box_h, box_w = content_box(picture.height, picture.width, size, config.resize)
        content = scaled[None, top : top + box_h, left : left + box_w]
        full = resize_maps(content, (picture.height, picture.width))[0].numpy()
        out.append((float(image_scores(content)[0]), full))
    return out


def tiled_input_maps(
    anomaly_maps: Callable[[Tensor], Tensor],
    images: Sequence[ImageSource],
    config: ModelConfig,
    batch_size: int,
    fill: Color,
) -> Tensor:
    """A tiled model's anomaly maps on its S x S input grid (the evaluation space): stitched, then max-pooled."""
    maps = [
        input_grid(torch.from_numpy(full), config.image_size)
        for _, full in _scored_maps(anomaly_maps, [read_image(i) for i in images], config, batch_size, fill)
    ]
    return torch.stack(maps)


@dataclass(frozen=True)
class _ModelInputs:
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


def _model_inputs(
    normal_images: Sequence[ImageSource], anomaly_images: Sequence[ImageSource], masks: list[Tensor], config: BGADConfig
) -> _ModelInputs:
    model = config.model
    if not model.tile_size:
        return _ModelInputs(
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
    return _ModelInputs(
        normals.images,
        anomalies.images,
        anomalies.masks,
        normals.valid,
        anomalies.valid,
        normals.owner,
        anomalies.owner,
    )


def _training_vectors(
    model: BGADModel, inputs: _ModelInputs, config: BGADConfig, progress: bool, *, fit_normalization: bool = True
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


def _synthetic_source(
    model: BGADModel, inputs: _ModelInputs, config: BGADConfig
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
def _cached_maps(model: BGADModel, levels: list[LevelData], images: slice) -> list[Tensor]:
    """Per-level log-likelihood maps (on the CPU) of the training ``images``, from the training vectors' cache."""
    return [cached_log_prob_maps(level, data, images).cpu() for level, data in zip(model.levels, levels, strict=True)]


def _set_calibration(
    model: BGADModel,
    normal_log_probs: list[Tensor],
    known_log_probs: list[Tensor] | None,
    inputs: _ModelInputs,
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
