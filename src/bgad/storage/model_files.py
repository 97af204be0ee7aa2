"""Model files: weights in safetensors plus a JSON description; no pickle anywhere.

The backbone's weights are not stored: they come from the backbone's own package, named in the JSON.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .._version import __version__
from ..config import BGADConfig
from ..data.samples import content_hash
from ..errors import BGADError
from ..method.thresholds import Thresholds
from .model_checks import check_scores, check_state, checked_scores, checked_thresholds
from .serialization import read_description, write_json

if TYPE_CHECKING:
    from ..method.model import BGADModel

MODEL_WEIGHTS = "model.safetensors"
MODEL_JSON = "model.json"
FORMAT = "bgad-model"
# 2: per-level modules with feature whitening (bgad 0.2); 3: log-scale scores, out-of-sample calibration (bgad 0.3);
# 4: EfficientNet-Lite inputs scaled as the weights were trained, (255 x - 127) / 128 (bgad 0.4)
FORMAT_VERSION = 4


def _trained_state(model: BGADModel) -> dict:
    """The model's weights without the backbone's, on the CPU: a model saved from a GPU loads anywhere."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith("extractor.")}


def _weights_metadata(config: BGADConfig) -> dict[str, str]:
    """What the weights were trained with and cannot be checked from their shapes alone (a backbone with the same
    channels, another input size with whitening off): stored beside the weights, compared with the JSON on load."""
    model = config.model
    return {"format": FORMAT, "backbone": model.backbone, "image_size": str(model.image_size), "resize": model.resize}


def _sort_metadata(path: Path) -> None:
    """Rewrite a safetensors file's header with its metadata keys sorted, in place: safetensors writes them in
    hash-map order, which changes from one save to the next, so that identical models would differ in bytes (and
    in SHA-1, which lineage and exports record). Same keys, same length: only the header's bytes change."""
    with open(path, "r+b") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
        header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= length:
            handle.seek(8)
            handle.write(text.ljust(length))  # safetensors pads its header with spaces too


class SavedModel(NamedTuple):
    """What :func:`load_model` reads back."""

    model: BGADModel
    config: BGADConfig
    thresholds: Thresholds
    normal_scores: np.ndarray | None  # image scores of the normals the thresholds came from (None: not recorded)
    known_scores: np.ndarray | None  # image scores of the known anomalies at calibration (None: not recorded)
    train_seconds: float | None


def save_model(
    model: BGADModel,
    config: BGADConfig,
    thresholds: Thresholds,
    directory: Path,
    *,
    normal_scores: np.ndarray | None = None,
    known_scores: np.ndarray | None = None,
    train_seconds: float | None = None,
) -> None:
    """Write the flows, the calibration constants, the thresholds, the normals' image scores (for thresholds set
    by a target false-positive rate later) and the configuration into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file(_trained_state(model), directory / MODEL_WEIGHTS, metadata=_weights_metadata(config))
    _sort_metadata(directory / MODEL_WEIGHTS)
    description = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "bgad_version": __version__,
        "config": config.to_dict(),
        "thresholds": thresholds._asdict(),
        "normal_image_scores": None if normal_scores is None else [float(s) for s in normal_scores],
        "known_anomaly_image_scores": None if known_scores is None else [float(s) for s in known_scores],
        # For reading only; the model uses the values stored in model.safetensors.
        "score_calibration": {
            "level_max": [float(level.log_prob_max) for level in model.levels],
            "normal_max": float(model.normal_max),
        },
        "channels": [level.channels for level in model.levels],
        "feature_shapes": [list(level.grid) for level in model.levels],
        "train_seconds": train_seconds,
    }
    write_json(directory / MODEL_JSON, description)


def model_id(path: Path) -> str:
    """A short name for a saved model: the first 12 hex digits of the SHA-1 of its description (``model.json``, or
    an ``.onnx`` file), as ``bgad serve`` reports it and a run's ``run.json`` names its parent."""
    return content_hash(path)[:12]


def model_digest(directory: Path) -> str:
    """SHA-1 over the SHA-1s of the model's weights and description: an export records it, so that ``--engine
    auto`` tells from content, not from timestamps, whether ``RUN/model.onnx`` is still this model."""
    digest = hashlib.sha1()
    for name in (MODEL_WEIGHTS, MODEL_JSON):
        with open(directory / name, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha1").digest())
    return digest.hexdigest()


def load_model(directory: Path) -> SavedModel:
    """Load what :func:`save_model` wrote; any missing, foreign, truncated or tampered file is a BGADError."""
    from ..method.model import BGADModel

    json_path, weights_path = directory / MODEL_JSON, directory / MODEL_WEIGHTS
    for path in (json_path, weights_path):
        if not path.is_file():
            raise BGADError(f"not a bgad model: {path} is missing")
    description = read_description(json_path, FORMAT, FORMAT_VERSION, "model")
    try:
        config = BGADConfig.from_dict(description["config"])
        train_seconds = description.get("train_seconds")
        train_seconds = None if train_seconds is None else float(train_seconds)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise BGADError(f"{json_path} is damaged: {err!r}") from None
    thresholds = checked_thresholds(description.get("thresholds"), json_path)
    normal_scores = checked_scores(description.get("normal_image_scores"), json_path)
    known = description.get("known_anomaly_image_scores")
    known_scores = np.zeros(0) if known == [] else checked_scores(known, json_path, "known_anomaly_image_scores")
    try:
        with safe_open(weights_path, framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(weights_path)
    except (SafetensorError, OSError) as err:
        raise BGADError(f"cannot read model weights {weights_path}: {err}") from None
    expected_metadata = _weights_metadata(config)
    changed = [key for key, value in expected_metadata.items() if metadata.get(key) != value]
    if changed:
        raise BGADError(
            f"model weights {weights_path} were trained with {', '.join(f'{k}={metadata.get(k)!r}' for k in changed)}"
            f" but {json_path} says {', '.join(f'{k}={expected_metadata[k]!r}' for k in changed)}"
        )
    model = BGADModel(config.model, seed=config.train.seed)
    expected = _trained_state(model)
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
        raise BGADError(f"model weights {weights_path} do not match {json_path} (different or damaged model)")
    check_state(state, expected, weights_path)
    model.load_state_dict(state, strict=False)
    model.eval()
    check_scores(model, config.model.image_size, weights_path)
    return SavedModel(model, config, thresholds, normal_scores, known_scores, train_seconds)
