"""The estimator users call: ``BGAD(config).fit(normal_images, anomaly_images, anomaly_masks)``.

It follows scikit-learn's contract: ``__init__`` only stores the configuration, ``fit`` validates and returns
``self``, and fitted state ends with an underscore.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .config import BGADConfig
from .encoding import GridEncoding
from .errors import BGADError
from .features import extract_features, image_batches
from .flow import ConditionalFlow
from .images import ImageSource, read_mask
from .model import BGADModel
from .runs import load_model, save_model
from .scoring import calibrate
from .training import LevelData, level_data, train_flows, vector_labels

MaskSource = str | Path | np.ndarray


class NotFittedError(BGADError, AttributeError):
    """The detector was used before ``fit`` or ``load``."""


class BGAD:
    """Supervised anomaly detector: BGAD flows on frozen backbone features.

    Example:
        >>> from bgad import BGAD, load_config
        >>> detector = BGAD(load_config("fast"))  # doctest: +SKIP
        >>> detector.fit(normal_paths, defect_paths, mask_paths)  # doctest: +SKIP
    """

    def __init__(self, config: BGADConfig | None = None):
        self.config = config

    @property
    def _config(self) -> BGADConfig:
        return self.config or BGADConfig()

    def fit(
        self,
        normal_images: Sequence[ImageSource],
        anomaly_images: Sequence[ImageSource] = (),
        anomaly_masks: Sequence[MaskSource] = (),
        *,
        log_path: str | Path | None = None,
        progress: bool = True,
    ) -> BGAD:
        """Train on normal images and (optionally) a few anomalies with their pixel masks.

        Sets ``model_`` (a :class:`BGADModel`), ``history_`` (one record per meta-epoch) and ``train_seconds_``.
        """
        config = self._config
        config.validate()
        if len(normal_images) == 0:
            raise BGADError("fit needs at least one normal image")
        if len(anomaly_images) != len(anomaly_masks):
            raise BGADError(f"got {len(anomaly_images)} anomaly images but {len(anomaly_masks)} masks")
        masks = [_mask_tensor(mask) for mask in anomaly_masks]
        start = time.perf_counter()
        torch.manual_seed(config.train.seed)
        model = BGADModel(config.model, seed=config.train.seed)
        size = config.model.image_size
        features = extract_features(
            model.extractor,
            list(normal_images) + list(anomaly_images),
            image_size=size,
            batch_size=config.train.extract_batch_size,
            progress=progress,
        )
        if config.model.standardize_features:
            model.fit_standardization([f[: len(normal_images)] for f in features])
        levels = [
            level_data(
                model.flow_inputs(level, feature),
                vector_labels([None] * len(normal_images) + masks, model.feature_shapes[level]),
                len(normal_images),
            )
            for level, feature in enumerate(features)
        ]
        del features
        self.history_ = train_flows(
            model.flows,
            model.conditions(),
            levels,
            config.train,
            config.loss,
            log_path=Path(log_path) if log_path is not None else None,
            progress=progress,
        )
        normal_log_probs = [
            _normal_log_probs(flow, condition, level, shape)
            for flow, condition, level, shape in zip(
                model.flows, model.conditions(), levels, model.feature_shapes, strict=True
            )
        ]
        model.level_max, model.normal_max = calibrate(normal_log_probs, (size, size))
        self.model_ = model
        self.train_seconds_ = time.perf_counter() - start
        return self

    def _check_is_fitted(self) -> BGADModel:
        if not hasattr(self, "model_"):
            raise NotFittedError("this BGAD detector is not fitted yet: call fit() or BGAD.load() first")
        return self.model_

    @torch.inference_mode()
    def anomaly_maps(self, images: Sequence[ImageSource], *, batch_size: int = 4) -> Tensor:
        """Anomaly maps (N, S, S) at the model's input size; higher = more anomalous."""
        model = self._check_is_fitted()
        size = self._config.model.image_size
        return torch.cat([model(batch) for batch in image_batches(images, image_size=size, batch_size=batch_size)])

    def save(self, directory: str | Path) -> None:
        """Write ``model.safetensors`` and ``model.json`` into ``directory`` (no pickle)."""
        save_model(self._check_is_fitted(), self._config, Path(directory))

    @classmethod
    def load(cls, directory: str | Path) -> BGAD:
        """Load a detector saved with :meth:`save`."""
        model, config = load_model(Path(directory))
        detector = cls(config)
        detector.model_ = model
        return detector


@torch.inference_mode()
def _normal_log_probs(
    flow: ConditionalFlow, condition: GridEncoding, level: LevelData, shape: tuple[int, int]
) -> Tensor:
    """Log-likelihood maps (N, h, w) of the normal training images of one level, from the cached vectors."""
    rows = torch.arange(level.n_normal).split(65536)
    log_prob = torch.cat([flow.log_prob(level.vectors[r], condition, level.positions[r]) for r in rows])
    return log_prob.view(-1, *shape)


def _mask_tensor(mask: MaskSource) -> Tensor:
    """A boolean (H, W) mask from a path or an array (bool; 0/1 or 0/255 integers; floats in [0, 1])."""
    if not isinstance(mask, np.ndarray):
        return torch.from_numpy(read_mask(mask))
    if mask.ndim != 2:
        raise BGADError(f"a mask must be a 2-D array, got shape {mask.shape}")
    if mask.dtype == bool:
        return torch.from_numpy(mask)
    threshold = 0.5 if mask.dtype.kind == "f" or mask.max() <= 1 else 127
    return torch.from_numpy(mask > threshold)
