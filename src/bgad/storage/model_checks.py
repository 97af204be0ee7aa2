"""A model that cannot score fails closed: its loaded state is checked before it scores anything, and a score that is
not a finite number is an error, never a verdict (a NaN is above no threshold, so it would read as "good").

:func:`check_state` and :func:`check_scores` run when a model is loaded (:func:`bgad.storage.model_files.load_model`);
:func:`finite_maps` guards every engine's anomaly maps (torch and the exported ONNX file alike).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import BGADError
from ..method.thresholds import Thresholds

_ROTATION_TOLERANCE = 1e-4  # |R R^T - I|; a float32 rotation drawn by bgad.method.flow.random_rotation is within 1e-6


class ScoringError(BGADError):
    """The model gave a score that is not a finite number: it cannot score (damaged or hand-edited files)."""


def checked_thresholds(values: object, source: Path) -> Thresholds:
    """:class:`Thresholds` from their stored mapping (``model.json``, an ONNX file's metadata): numbers, all
    finite; anything else is a one-line :class:`BGADError` naming ``source``."""
    names = Thresholds._fields
    if not isinstance(values, dict) or set(values) != set(names) or not all(_is_number(values[n]) for n in names):
        raise BGADError(f"{source} is damaged: thresholds must be a mapping of {', '.join(names)} to numbers")
    thresholds = Thresholds(**{name: float(values[name]) for name in names})
    if not all(math.isfinite(value) for value in thresholds):
        raise BGADError(f"{source} is damaged: thresholds must be finite numbers, got {thresholds._asdict()}")
    return thresholds


def checked_scores(values: object, source: Path, name: str = "normal_image_scores") -> np.ndarray | None:
    """Stored image scores (None: not stored): a non-empty list of finite numbers."""
    if values is None:
        return None
    if not isinstance(values, list) or not values or not all(_is_number(v) and math.isfinite(v) for v in values):
        raise BGADError(f"{source} is damaged: {name} must be finite numbers")
    return np.array(values, dtype=np.float64)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_state(state: dict[str, Tensor], expected: dict[str, Tensor], source: Path) -> None:
    """Raise :class:`BGADError` unless every tensor of ``state`` (read from ``source``) has the dtype of its
    counterpart in ``expected`` (a fresh model's), is finite, and keeps what the model relies on: positive channel
    standard deviations and orthogonal rotations. Keys and shapes are compared before this."""
    for key in sorted(state):
        value = state[key]
        if value.dtype != expected[key].dtype:
            raise BGADError(f"{source} is damaged: {key} is stored as {value.dtype}, expected {expected[key].dtype}")
        if not torch.isfinite(value).all():
            raise BGADError(f"{source} is damaged: {key} holds values that are not finite (NaN or infinity)")
        if key.endswith("channel_std") and not (value > 0).all():
            raise BGADError(f"{source} is damaged: {key} must be positive (it divides the features)")
        if key.endswith("rotation") and not _is_rotation(value):
            raise BGADError(f"{source} is damaged: {key} is not a rotation matrix")


def _is_rotation(matrix: Tensor) -> bool:
    identity = torch.eye(matrix.shape[0], dtype=torch.float64)
    product = matrix.double() @ matrix.double().T
    return bool((product - identity).abs().max() <= _ROTATION_TOLERANCE)


@torch.inference_mode()
def check_scores(model: nn.Module, image_size: int, source: Path) -> None:
    """Raise :class:`ScoringError` unless ``model`` scores a plain grey image with finite values: finite weights
    can still overflow (a weight of 3e38), and this finds it when the model is loaded, not on the first image."""
    maps = model(torch.full((1, 3, image_size, image_size), 0.5))
    if not torch.isfinite(maps).all():
        raise ScoringError(f"the model in {source} gives scores that are not finite numbers: its files are damaged")


def finite_maps(maps: Tensor) -> Tensor:
    """``maps`` unchanged if every value is finite; else :class:`ScoringError`."""
    if not torch.isfinite(maps).all():
        raise ScoringError("the model gave an anomaly score that is not a finite number: it cannot score this image")
    return maps
