"""Micro-benchmarks behind docs/performance.md: gathers, the flow with each positional-condition path, and bgad's
own training step per level.

Run: python benchmarks/flow_step.py   (on an idle machine; prints medians in milliseconds)
"""

import functools

import torch

from bgad.app.speed import median_seconds
from bgad.config import LossConfig
from bgad.method.level import FeatureLevel
from bgad.method.training import train_step

LEVELS = ((24, 64), (40, 32), (112, 16))  # (channels, grid side) of EfficientNet-Lite0 at strides 4, 8, 16


def median_ms(fn, repeats: int = 20, warmup: int = 3) -> float:
    return 1000 * median_seconds(fn, repeats=repeats, warmup=warmup)


def gathers() -> None:
    table = torch.randn(64, 280, requires_grad=True)
    index = torch.randint(0, 64, (4096,))
    grad = torch.randn(4096, 280)
    indexing = median_ms(lambda: table[index].backward(grad))
    selecting = median_ms(lambda: table.index_select(0, index).backward(grad))
    print(f"gather (64x280 -> 4096 rows) + backward: tensor[index] {indexing:.2f} ms, index_select {selecting:.2f} ms")


def condition_paths() -> None:
    """Forward + backward of one level's flow on 4096 vectors, with the dense condition table and with the
    separable grid encoding that bgad uses (the same numbers, computed two ways)."""
    for channels, side in LEVELS:
        level = _level(channels, side)
        vectors, positions = torch.randn(4096, channels), torch.randint(0, side * side, (4096,))
        for name, condition in (("table", level.condition.table()), ("grid", level.condition)):
            ms = median_ms(functools.partial(_forward_backward, level, vectors, condition, positions), repeats=10)
            print(f"C={channels:3d} {side}x{side} {name:5s}: {ms:6.1f} ms forward+backward")


def training_steps() -> None:
    """:func:`bgad.method.training.train_step` (phase-2 loss, 5 % anomalous vectors, Adam) on 4096 vectors per level."""
    for channels, side in LEVELS:
        level = _level(channels, side)
        optimizer = torch.optim.Adam(level.parameters())
        vectors, positions = torch.randn(4096, channels), torch.randint(0, side * side, (4096,))
        anomalous = torch.rand(4096) < 0.05
        step = functools.partial(train_step, level, optimizer, vectors, positions, anomalous, LossConfig())
        ms = median_ms(functools.partial(step, semi_push_pull=True), repeats=10)
        print(f"C={channels:3d} {side}x{side} train_step: {ms:6.1f} ms/step, {4096 / ms * 1000:8.0f} vectors/s")


def _forward_backward(level: FeatureLevel, vectors, condition, positions) -> None:
    level.flow.zero_grad(set_to_none=True)
    level.flow.log_prob(vectors, condition, positions).mean().backward()


def _level(channels: int, side: int) -> FeatureLevel:
    return FeatureLevel(
        channels, (side, side), normalization="none", condition_dim=128, n_blocks=8, clamp_alpha=1.9, seed=0
    )


if __name__ == "__main__":
    torch.set_num_threads(2)
    torch.manual_seed(0)
    gathers()
    condition_paths()
    training_steps()
