"""``bgad speed``: how fast the backbone, the whole model and flow training run on this machine.

Timings are medians of repeats after warm-up. ``ratio`` = end-to-end / backbone-only per image: the price of
the flows and the scoring on top of the feature extraction every anomaly detector with this backbone pays.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from ..config import LossConfig, TrainConfig
from ..method.model import BGADModel
from ..method.training import train_step


def median_seconds(fn: Callable[[], object], *, repeats: int, warmup: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def inference_speed(model: BGADModel, *, batch_size: int, repeats: int = 10, warmup: int = 3) -> dict[str, float]:
    """Backbone-only and end-to-end (image tensor in, anomaly map out) milliseconds per image."""
    device = model.normal_max.device
    size = model.config.image_size
    images = torch.rand(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)

    def run(fn: Callable[[], object]) -> float:
        def synced() -> None:
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()

        return 1000 * median_seconds(synced, repeats=repeats, warmup=warmup) / batch_size

    backbone = run(lambda: model.extractor(images))
    end_to_end = run(lambda: model(images))
    return {
        "batch_size": batch_size,
        "backbone_ms": round(backbone, 3),
        "end_to_end_ms": round(end_to_end, 3),
        "ratio": round(end_to_end / backbone, 3),
        "images_per_s": round(1000 / end_to_end, 2),
    }


def training_speed(model: BGADModel, train: TrainConfig, loss: LossConfig, *, steps: int = 10) -> dict[str, float]:
    """Flow-training throughput in feature vectors per second, per level and over a whole epoch's mix.

    A step is one fiber batch of random standardized vectors through one level's flow with the phase-2 loss
    (5 % anomalous vectors), backward and an Adam step: the inner loop of :func:`bgad.method.training.train_flows`.
    """
    device = model.normal_max.device
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.levels.parameters(), lr=train.lr)  # the flows' weights
    per_level, seconds_per_image = [], 0.0
    for level in model.levels:
        vectors = torch.randn(train.fiber_batch, level.channels, generator=generator).to(device)
        positions = torch.randint(0, level.positions, (train.fiber_batch,), generator=generator).to(device)
        anomalous = (torch.rand(train.fiber_batch, generator=generator) < 0.05).to(device)

        def step(level=level, vectors=vectors, positions=positions, anomalous=anomalous) -> None:
            train_step(level, optimizer, vectors, positions, anomalous, loss, semi_push_pull=True)
            if device.type == "cuda":
                torch.cuda.synchronize()

        rate = train.fiber_batch / median_seconds(step, repeats=steps, warmup=2)
        per_level.append(round(rate))
        seconds_per_image += level.positions / rate
    total_vectors = sum(level.positions for level in model.levels)
    return {"train_vectors_per_s": round(total_vectors / seconds_per_image), "train_vectors_per_s_per_level": per_level}
