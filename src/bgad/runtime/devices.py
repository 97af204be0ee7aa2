"""Which device computes: ``cpu``, ``cuda`` or ``auto`` (the GPU when torch sees one), as every command takes it.

The device is where a fit or a command runs, never part of a model: models are saved from the CPU and load on any
device.
"""

from __future__ import annotations

import os

import torch

from ..errors import BGADError

DEVICES = ("cpu", "cuda", "auto")


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device for ``device``; ``auto`` is ``cuda`` when torch sees a GPU, else ``cpu``.

    ``cuda`` without an index means this process's GPU: ``cuda:LOCAL_RANK`` in a ``torchrun`` launch (one GPU per
    process), else the current GPU. A GPU that is not there is a BGADError.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise BGADError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}") from None
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise BGADError(f"unsupported device {device!r}; use one of {', '.join(DEVICES)}")
    if not torch.cuda.is_available():
        raise BGADError("device cuda was requested but no CUDA GPU is available to torch")
    index = resolved.index
    if index is None:
        index = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
    if index >= torch.cuda.device_count():
        raise BGADError(f"GPU cuda:{index} was requested but torch sees {torch.cuda.device_count()} GPU(s)")
    return torch.device("cuda", index)
