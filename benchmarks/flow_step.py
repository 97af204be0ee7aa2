"""Micro-benchmarks behind docs/performance.md: gathers and one flow training step per level.

Run: python benchmarks/flow_step.py   (on an idle machine; prints medians in milliseconds)
"""

import functools

import torch

from bgad.encoding import GridEncoding
from bgad.flow import ConditionalFlow
from bgad.speed import median_seconds


def median_ms(fn, repeats: int = 20, warmup: int = 3) -> float:
    return 1000 * median_seconds(fn, repeats=repeats, warmup=warmup)


def gathers() -> None:
    table = torch.randn(64, 280, requires_grad=True)
    index = torch.randint(0, 64, (4096,))
    grad = torch.randn(4096, 280)
    indexing = median_ms(lambda: table[index].backward(grad))
    selecting = median_ms(lambda: table.index_select(0, index).backward(grad))
    print(f"gather (64x280 -> 4096 rows) + backward: tensor[index] {indexing:.2f} ms, index_select {selecting:.2f} ms")


def train_step(flow: ConditionalFlow, optimizer, vectors, condition, positions) -> None:
    loss = -flow.log_prob(vectors, condition, positions).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def flow_steps() -> None:
    torch.manual_seed(0)
    for channels, side in ((24, 64), (40, 32), (112, 16)):
        grid = GridEncoding.create(128, side, side)
        flow = ConditionalFlow(channels)
        optimizer = torch.optim.Adam(flow.parameters())
        vectors = torch.randn(4096, channels)
        positions = torch.randint(0, side * side, (4096,))
        for name, condition in (("table", grid.table()), ("grid", grid)):
            ms = median_ms(functools.partial(train_step, flow, optimizer, vectors, condition, positions), repeats=10)
            print(f"C={channels:3d} {side}x{side} {name:5s}: {ms:6.1f} ms/step, {4096 / ms * 1000:8.0f} vectors/s")


if __name__ == "__main__":
    torch.set_num_threads(2)
    gathers()
    flow_steps()
