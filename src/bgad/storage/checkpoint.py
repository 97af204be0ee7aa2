"""Training checkpoints: the state after a meta-epoch, so that an interrupted training can resume exactly.

A checkpoint is a folder holding ``training.json`` and the ``state-NNNN.safetensors`` file it names (no pickle).
Every file is written to a temporary name, synced and renamed, and the JSON goes last: until its rename the
folder still describes the previous checkpoint, afterwards the new one, so a crash never leaves a mixed pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

from .._version import __version__
from ..errors import BGADError
from .serialization import read_description, write_atomic, write_json

STATE_JSON = "training.json"
FORMAT = "bgad-training-checkpoint"
FORMAT_VERSION = 1
_FLOWS, _OPTIMIZER, _GENERATOR = "flows.", "optimizer.", "generator"


@dataclass(frozen=True)
class TrainingState:
    """Everything :func:`bgad.method.training.train_flows` needs to continue after meta-epoch
    ``next_meta_epoch - 1``."""

    next_meta_epoch: int
    flows: dict[str, Tensor]  # the flows' state_dict
    optimizer: dict[str, Any]  # Adam's state_dict; its per-parameter state is all tensors
    generator: Tensor  # uint8 state of the torch.Generator that shuffles the batches
    history: list[dict]  # one record per finished meta-epoch
    config: dict | None  # the configuration the run was started with


def save_checkpoint(state: TrainingState, directory: Path) -> None:
    """Write ``state`` into ``directory`` atomically, replacing the checkpoint there (its tensors from the CPU: a
    checkpoint of a GPU fit resumes on the CPU too)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {_FLOWS + key: value for key, value in state.flows.items()}
    for index, values in state.optimizer["state"].items():
        tensors |= {f"{_OPTIMIZER}{index}.{name}": value for name, value in values.items()}
    tensors[_GENERATOR] = state.generator
    # Named by the epoch, so it never overwrites the file the current training.json names.
    tensors_name = f"state-{state.next_meta_epoch:04d}.safetensors"
    write_atomic(directory / tensors_name, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))
    description = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "bgad_version": __version__,
        "tensors": tensors_name,
        "next_meta_epoch": state.next_meta_epoch,
        "param_groups": state.optimizer["param_groups"],
        "history": state.history,
        "config": state.config,
    }
    write_json(directory / STATE_JSON, description, indent=1)
    for stale in directory.glob("state-*.safetensors"):
        if stale.name != tensors_name:
            stale.unlink(missing_ok=True)


def load_checkpoint(directory: Path) -> TrainingState | None:
    """The state saved in ``directory``, None if there is none yet; a damaged or foreign one is a BGADError."""
    json_path = directory / STATE_JSON
    if not json_path.is_file():
        return None
    description = read_description(json_path, FORMAT, FORMAT_VERSION, "training checkpoint")
    name = description.get("tensors")
    if not isinstance(name, str) or Path(name).name != name:
        raise BGADError(f"training checkpoint {json_path} is damaged: bad tensor file name {name!r}")
    try:
        tensors = load((directory / name).read_bytes())
    except (SafetensorError, OSError) as err:
        raise BGADError(f"cannot read training checkpoint tensors {directory / name}: {err}") from None
    try:
        return _state(description, tensors)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise BGADError(f"training checkpoint {json_path} is damaged: {err!r}") from None


def _state(description: dict, tensors: dict[str, Tensor]) -> TrainingState:
    """Reassemble the state; the optimizer's tensors are stored flat as ``optimizer.<param index>.<name>``."""
    optimizer_state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(_OPTIMIZER):
            index, tensor_name = key.removeprefix(_OPTIMIZER).split(".", 1)
            optimizer_state.setdefault(int(index), {})[tensor_name] = value
    history, groups = description["history"], description["param_groups"]
    expected = {"history": list, "param_groups": list, "config": dict, "next_meta_epoch": int}
    wrong = [key for key, kind in expected.items() if not isinstance(description[key], kind)]
    if wrong or not all(isinstance(item, dict) for item in history + groups):
        raise ValueError(f"wrong types in {wrong or ['history', 'param_groups']}")
    if len(history) != description["next_meta_epoch"] or tensors[_GENERATOR].dtype != torch.uint8:
        raise ValueError("history, epoch and generator state disagree")
    return TrainingState(
        next_meta_epoch=description["next_meta_epoch"],
        flows={k.removeprefix(_FLOWS): v for k, v in tensors.items() if k.startswith(_FLOWS)},
        optimizer={"state": optimizer_state, "param_groups": groups},
        generator=tensors[_GENERATOR],
        history=history,
        config=description["config"],
    )
