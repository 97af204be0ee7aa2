"""Data-parallel flow training over the processes of a ``torchrun`` launch (docs/performance.md).

Every process holds the whole feature cache and draws the same fiber batches (same seed, same generator); each runs the
flow on its own contiguous chunk of every batch. :func:`bgad.method.training.train_step` makes the step equal to the
single-process step: the normal boundary is taken from the log-likelihoods of the whole batch (gathered), each loss
term is the chunk's sum divided by the whole batch's count, and the gradients are summed over the processes. Process 0
alone writes files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

# How long a process waits for the others at a collective: process 0 checks the whole dataset before the others
# hear what to train on, which takes minutes on large datasets (torch's default would give up after 30).
TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class DataParallel:
    """This process's place in the process group: ``rank`` among ``world_size`` processes."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        """Process 0: the one that reads checkpoints, writes files and reports."""
        return self.rank == 0

    def sizes(self, n: int) -> list[int]:
        """The chunk sizes of a batch of ``n`` rows, in rank order (as ``Tensor.tensor_split`` makes them)."""
        base, extra = divmod(n, self.world_size)
        return [base + (rank < extra) for rank in range(self.world_size)]

    def chunk(self, n: int) -> slice:
        """This process's contiguous rows of a batch of ``n`` rows."""
        sizes = self.sizes(n)
        start = sum(sizes[: self.rank])
        return slice(start, start + sizes[self.rank])

    def gather(self, local: Tensor, n: int) -> Tensor:
        """The whole batch (``n`` rows) from every process's chunk ``local``, in rank order (no gradients)."""
        sizes = self.sizes(n)
        padded = local.new_zeros((max(sizes), *local.shape[1:]))
        padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])

    def sum_(self, tensors: Sequence[Tensor]) -> None:
        """Replace each tensor by its sum over the processes (one all-reduce for all of them)."""
        flat = torch.cat([tensor.reshape(-1) for tensor in tensors])
        dist.all_reduce(flat)
        for tensor, total in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
            tensor.copy_(total.view_as(tensor))

    def broadcast(self, value: Any) -> Any:
        """Process 0's ``value`` (picklable; its tensors travel on the CPU), on every process."""
        box = [_on_cpu(value) if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def launched() -> bool:
    """Whether this process is one of several started by ``torchrun`` (its ``WORLD_SIZE`` is above 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> DataParallel | None:
    """The data-parallel group this process trains in, or None when it trains alone (no group, or a group of 1)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return DataParallel(dist.get_rank(), dist.get_world_size())


@contextmanager
def process_group(device: torch.device) -> Iterator[DataParallel | None]:
    """Inside, this process is in the process group of its ``torchrun`` launch (``WORLD_SIZE``, ``RANK``,
    ``MASTER_ADDR``... from its environment), NCCL when training on ``device`` cuda, gloo on the CPU; the group is
    left at the end. Outside such a launch, or in a group made by the caller, it does nothing."""
    if not launched() or dist.is_initialized():
        yield current()
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def _on_cpu(value: Any) -> Any:
    """``value`` with every tensor in it (in dicts, lists, tuples) copied to the CPU, so that it unpickles on any
    process, whatever its GPU."""
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _on_cpu(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_on_cpu(item) for item in value] if isinstance(value, list) else tuple(_on_cpu(v) for v in value)
    return value
