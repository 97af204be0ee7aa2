"""The estimator users call: ``BGAD(config).fit(normal_images, anomaly_images, anomaly_masks)``.

It follows scikit-learn's contract: ``__init__`` only stores the configuration and the device (like ``n_jobs``,
where the work runs, not what it learns: never saved with the model), ``fit`` validates and returns ``self``, and
fitted state ends with an underscore.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .config import BGADConfig, TrainConfig
from .data.images import ImageSource
from .errors import BGADError, NotFittedError
from .inference import MapEngine, Predictor
from .method.fitting import (
    MaskSource,
    cached_maps,
    masks_for,
    model_inputs,
    set_calibration,
    synthetic_source,
    training_vectors,
)
from .method.model import BGADModel
from .method.training import train_flows
from .runtime.devices import resolve_device
from .runtime.distributed import current
from .storage.model_checks import finite_maps
from .storage.model_files import load_model, save_model


class BGAD(Predictor):
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
    processes (:mod:`bgad.runtime.distributed`) once the process group is initialized.
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
        synthesis_refresh: int | None = None,
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
        ``normal_images``, all of ``new_normal_images`` and every defect, with a new synthetic pool every
        ``synthesis_refresh`` (default ``train.update_synthesis_refresh``) meta-epochs; then the score calibration
        and thresholds are set again on those normals. This detector is left as it was. ``log_path`` and
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
            synthesis_refresh=synthesis_refresh or config.train.update_synthesis_refresh,
        )
        parent = self.fitted_model()
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
        inputs = model_inputs(normal_images, anomaly_images, masks_for(anomaly_images, anomaly_masks), config)
        device, parallel = resolve_device(self.device), current()
        progress = progress and (parallel is None or parallel.is_main)
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):  # seeded for repeatable fits; the caller's torch RNG is left as it was
            torch.manual_seed(config.train.seed)
            model = make_model().to(device)
            levels = training_vectors(model, inputs, config, progress, fit_normalization=fit_normalization)
            self.history_ = train_flows(
                model.levels,
                levels,
                schedule,
                config.loss,
                synthetic=synthetic_source(model, inputs, config),
                log_path=Path(log_path) if log_path is not None else None,
                checkpoint=Path(checkpoint) if checkpoint is not None else None,
                config=config.to_dict(),
                progress=progress,
                parallel=parallel,
            )
            self.normal_log_probs_ = cached_maps(model, levels, slice(0, len(inputs.normals)))
            known = cached_maps(model, levels, slice(len(inputs.normals), None)) if inputs.masks else None
            self.thresholds_, self.normal_scores_, self.known_scores_ = set_calibration(
                model, self.normal_log_probs_, known, inputs, config
            )
        self.model_ = model
        self.train_seconds_ = time.perf_counter() - start

    @property
    def resize(self) -> str:
        """How images are fitted to the square model input (:attr:`bgad.config.ModelConfig.resize`)."""
        return self._config.model.resize

    def fitted_model(self) -> BGADModel:
        """The fitted :class:`BGADModel`; a :class:`NotFittedError` before :meth:`fit` or :meth:`load`."""
        if not hasattr(self, "model_"):
            raise NotFittedError("this BGAD detector is not fitted yet: call fit() or BGAD.load() first")
        return self.model_

    def to(self, device: str | torch.device) -> BGAD:
        """Move the fitted model to ``device`` (``"cpu"``, ``"cuda"``, ``"auto"``), which becomes :attr:`device`;
        images follow it automatically."""
        self.fitted_model().to(resolve_device(device))
        self.device = device
        return self

    def map_engine(self) -> MapEngine:
        """The fitted model as prediction runs it: on :attr:`device`, maps back on the CPU."""
        model = self.fitted_model()
        return MapEngine(_on_device(model), model.config, model.extractor.pad_color)

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
        model = copy.deepcopy(self.fitted_model())
        config = self._config
        inputs = model_inputs(normal_images, anomaly_images, masks_for(anomaly_images, anomaly_masks), config)
        batches = self.map_engine().input_batches
        known = _level_log_probs(model, batches(inputs.anomalies, batch_size)) if inputs.masks else None
        normal = _level_log_probs(model, batches(inputs.normals, batch_size))
        calibrated = BGAD(config, device=self.device)
        calibrated.model_, calibrated.normal_log_probs_ = model, normal
        calibrated.thresholds_, calibrated.normal_scores_, calibrated.known_scores_ = set_calibration(
            model, normal, known, inputs, config, target_fpr=target_fpr
        )
        calibrated.train_seconds_ = self.train_seconds_
        return calibrated

    @torch.inference_mode()
    def level_log_probs(self, images: Sequence[ImageSource], *, batch_size: int = 4) -> list[Tensor]:
        """Per-level log-likelihood maps (the flows' output before scoring), one (N, h, w) tensor per level on the
        CPU: what :mod:`bgad.method.scoring` turns into anomaly maps, for rescoring with other levels or
        temperatures."""
        return _level_log_probs(self.fitted_model(), self.map_engine().input_batches(images, batch_size))

    def save(self, directory: str | Path) -> None:
        """Write ``model.safetensors`` and ``model.json`` into ``directory`` (no pickle)."""
        model = self.fitted_model()
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
