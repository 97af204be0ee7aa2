"""Two-phase training of the flows on cached feature vectors (reference §3.1-3.3).

The backbone is frozen, so every image's features are extracted once and reused every epoch; the reference
re-runs the backbone for every pass. Each optimizer step takes one fiber batch of random vectors of one level.
Phase 1 uses normal images only with the maximum-likelihood loss; phase 2 adds the known anomalies (each counted
``anomaly_repeats`` times) and the boundary-guided semi-push-pull loss.

One Adam optimizer holds all levels; a step back-propagates through one level only and, with gradients set to
None by ``zero_grad``, Adam leaves the other levels untouched (PyTorch >= 2 semantics, reference §3.2).

Training runs where the flows and the cached vectors are (the CPU or a GPU). Under ``torchrun`` it is
data-parallel (:mod:`bgad.runtime.distributed`): every process draws the same fiber batches and takes one chunk of each.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import LossConfig, TrainConfig
from ..errors import BGADError
from ..runtime.distributed import DataParallel
from ..runtime.progress import Bar, log_line
from ..runtime.progress import progress as progress_bar
from ..storage.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from .level import FeatureLevel
from .losses import LossTerms, WholeBatch, bgad_loss


@dataclass(frozen=True)
class LevelData:
    """All training vectors of one feature level; the rows of normal images come first."""

    vectors: Tensor  # (M, C)
    positions: Tensor  # (M,) row of the level's condition table
    anomalous: Tensor  # (M,) bool, from the masks
    n_normal: int  # rows 0 .. n_normal-1 belong to normal images, then come the known anomalies' rows
    n_synthetic: int = 0  # the last rows belong to synthetic anomalies: used once per epoch, not repeated


def vector_labels(masks: list[Tensor | None], shape: tuple[int, int]) -> Tensor:
    """Label the cells of an (h, w) feature grid: a cell is anomalous if *any* mask pixel under it is.

    The reference samples the top-left pixel of each cell, so small defects vanish at coarse levels; max
    pooling the full-resolution mask keeps every defect visible at every level. ``None`` means a normal image.
    """
    out = torch.zeros(len(masks), *shape, dtype=torch.bool)
    for i, mask in enumerate(masks):
        if mask is not None:
            out[i] = F.adaptive_max_pool2d(mask[None, None].float(), shape)[0, 0] > 0
    return out


def level_data(vectors: Tensor, labels: Tensor, n_normal_images: int) -> LevelData:
    """Pair flow inputs (N, h*w, C), positions in (y, x) order, with their (N, h, w) labels, on the vectors' device."""
    n, h, w = labels.shape
    return LevelData(
        vectors=vectors.reshape(n * h * w, -1).contiguous(),
        positions=torch.arange(h * w, device=vectors.device).repeat(n),
        anomalous=labels.reshape(-1).to(vectors.device),
        n_normal=n_normal_images * h * w,
    )


def cached_log_prob_maps(level: FeatureLevel, data: LevelData, images: slice) -> Tensor:
    """Log-likelihood maps (n, h, w) of a range of training images of one level, from its cached vectors."""
    cells = level.positions
    stop = len(data.vectors) if images.stop is None else images.stop * cells
    rows = slice((images.start or 0) * cells, stop)
    return level.log_prob_rows(data.vectors[rows], data.positions[rows]).view(-1, *level.grid)


def learning_rate(config: TrainConfig, meta_epoch: int, step: int, steps_in_meta_epoch: int) -> float:
    """Cosine decay per meta-epoch, with a per-step linear warm-up over the first meta-epochs.

    The warm-up goes from lr/10 to the cosine value at the end of the warm-up. Unlike the reference, its progress
    is counted in real optimizer steps (the reference's count uses the length of a 2-element list, reference §3.1).
    """
    lr_min = config.lr * config.lr_min_ratio

    def cosine(epoch: int) -> float:
        return lr_min + (config.lr - lr_min) * (1 + math.cos(math.pi * epoch / config.meta_epochs)) / 2

    if meta_epoch >= config.warmup_meta_epochs:
        return cosine(meta_epoch)
    progress = (meta_epoch + step / steps_in_meta_epoch) / config.warmup_meta_epochs
    start = config.lr / 10
    return start + progress * (cosine(config.warmup_meta_epochs) - start)


def _epoch_rows(level: LevelData, with_anomalies: bool, repeats: int) -> Tensor:
    normal = torch.arange(level.n_normal)
    if not with_anomalies:
        return normal
    known = torch.arange(level.n_normal, len(level.vectors) - level.n_synthetic).repeat(repeats)
    synthetic = torch.arange(len(level.vectors) - level.n_synthetic, len(level.vectors))
    return torch.cat([normal, known, synthetic])


def _meta_epoch_plan(
    levels: list[LevelData], config: TrainConfig, with_anomalies: bool, generator: torch.Generator
) -> list[tuple[int, Tensor]]:
    """The (level, rows) fiber batches of one meta-epoch, levels interleaved in random order."""
    plan = []
    for _ in range(config.sub_epochs):
        sub_epoch = []
        for index, level in enumerate(levels):
            rows = _epoch_rows(level, with_anomalies, config.anomaly_repeats)
            rows = rows[torch.randperm(len(rows), generator=generator)]
            sub_epoch += [(index, chunk) for chunk in rows.tensor_split(max(1, len(rows) // config.fiber_batch))]
        order = torch.randperm(len(sub_epoch), generator=generator)
        plan += [sub_epoch[i] for i in order]
    return plan


def train_flows(
    model_levels: Sequence[FeatureLevel],
    levels: list[LevelData],
    train_config: TrainConfig,
    loss_config: LossConfig,
    *,
    synthetic: Callable[[int], list[LevelData] | None] | None = None,
    log_path: Path | None = None,
    checkpoint: Path | None = None,
    config: dict | None = None,
    progress: bool = True,
    parallel: DataParallel | None = None,
) -> list[dict]:
    """Train the flows of ``model_levels`` in place on the vectors of ``levels`` (one :class:`LevelData` per model
    level, on the flows' device); return one log record per meta-epoch (also appended to ``log_path``).

    ``synthetic(meta_epoch)`` returns the vectors of a fresh pool of synthetic anomalies (``n_normal == 0``), or
    None if it could make none; it is called at the first phase-2 meta-epoch and every ``synthesis_refresh``
    meta-epochs after, and must depend on its argument only.

    With ``checkpoint`` (a folder, see :mod:`bgad.storage.checkpoint`), the state is saved there after every meta-epoch,
    tagged with ``config``; a checkpoint found there at the start is resumed (it must carry the same ``config``) and
    the run ends with the same flows as an uninterrupted one. Ctrl-C propagates; the last checkpoint stays complete.

    With ``parallel``, every process of the group calls this with the same arguments and the same vectors, and
    ``train_config.fiber_batch`` is the whole batch that the processes share (:func:`train_step`); process 0
    alone reads the checkpoint (the others start from its state), writes the checkpoint and the log, and shows
    progress.
    """
    flows = nn.ModuleList(level.flow for level in model_levels)
    generator = torch.Generator().manual_seed(train_config.seed)
    optimizer = torch.optim.Adam(flows.parameters(), lr=train_config.lr)
    main = parallel is None or parallel.is_main
    checkpoint, log_path = (checkpoint, log_path) if main else (None, None)
    history = _resume(checkpoint, config, flows, optimizer, generator) if checkpoint is not None else []
    if parallel is not None:
        history = _share_state(parallel, flows, optimizer, generator, history)
    if history and log_path is not None:  # the log may hold records the checkpoint does not: start it afresh
        log_path.write_text("".join(json.dumps(record) + "\n" for record in history))
    flows.train()
    first = len(history)
    current = levels
    initial = sum(record["steps"] for record in history)
    with progress_bar(desc="training flows", unit="step", initial=initial, disable=not (progress and main)) as bar:
        for meta_epoch in range(first, train_config.meta_epochs):
            semi_push_pull = meta_epoch >= train_config.normal_only_meta_epochs
            since_phase_2 = meta_epoch - train_config.normal_only_meta_epochs
            round_start = meta_epoch - since_phase_2 % train_config.synthesis_refresh
            if semi_push_pull and synthetic is not None and meta_epoch in (round_start, first):
                current = _with_pool(levels, synthetic(round_start))  # a resumed run redraws its round's pool
            record = _meta_epoch(
                meta_epoch, model_levels, current, optimizer, generator, train_config, loss_config, bar, parallel
            )
            history.append(record)
            loss = record["loss"]
            log_line(
                bar,
                f"meta-epoch {meta_epoch + 1}/{train_config.meta_epochs} ({record['phase']}): "
                f"{record['steps']} steps, loss {loss:.3f}, {record['seconds']:.0f} s",
            )
            if checkpoint is not None:
                state = TrainingState(
                    meta_epoch + 1, flows.state_dict(), optimizer.state_dict(), generator.get_state(), history, config
                )
                save_checkpoint(state, checkpoint)
            if log_path is not None:
                with open(log_path, "a") as log:
                    log.write(json.dumps(record) + "\n")
    flows.eval()
    return history


def train_step(
    level: FeatureLevel,
    optimizer: torch.optim.Optimizer,
    vectors: Tensor,
    positions: Tensor,
    anomalous: Tensor,
    loss_config: LossConfig,
    *,
    semi_push_pull: bool,
    parallel: DataParallel | None = None,
) -> LossTerms:
    """One optimizer step on one fiber batch of one level: the inner loop of :func:`train_flows` and of
    ``bgad speed``. A batch with no term to learn from (only anomalous vectors, no boundary) changes nothing.

    With ``parallel``, every process passes the same whole batch and runs the flow on its own chunk of it; the
    boundary comes from the gathered log-likelihoods, each loss term is the chunk's share of the batch's term,
    and the gradients and terms are summed over the processes before the step: the step and the returned terms
    are the single-process ones, up to float rounding.
    """
    whole = None
    if parallel is not None:
        chunk = parallel.chunk(len(vectors))
        vectors, positions, whole_anomalous, anomalous = vectors[chunk], positions[chunk], anomalous, anomalous[chunk]
    log_prob = level.log_prob(vectors, positions)
    if parallel is not None:
        whole = WholeBatch(parallel.gather(log_prob.detach(), len(whole_anomalous)), whole_anomalous)
    terms = bgad_loss(log_prob, anomalous, loss_config, semi_push_pull=semi_push_pull, whole=whole)
    if terms.total.requires_grad:
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        if parallel is not None:
            terms = _summed(parallel, level, terms)
        optimizer.step()
    return terms


def _summed(parallel: DataParallel, level: FeatureLevel, terms: LossTerms) -> LossTerms:
    """Sum the level's gradients and the chunk's loss terms over the processes (one all-reduce); the boundaries
    are already the whole batch's."""
    grads = [p.grad for p in level.parameters() if p.grad is not None]
    losses = torch.stack([term.detach() for term in terms[:4]])
    parallel.sum_([*grads, losses])
    return LossTerms(*losses.unbind(), terms.b_n, terms.b_a)


def _meta_epoch(
    meta_epoch: int,
    model_levels: Sequence[FeatureLevel],
    current: list[LevelData],
    optimizer: torch.optim.Adam,
    generator: torch.Generator,
    train_config: TrainConfig,
    loss_config: LossConfig,
    bar: Bar,
    parallel: DataParallel | None,
) -> dict:
    """Run the optimizer steps of one meta-epoch; return its log record."""
    start = time.perf_counter()
    semi_push_pull = meta_epoch >= train_config.normal_only_meta_epochs
    has_anomalies = any(len(level.vectors) > level.n_normal for level in current)
    plan = _meta_epoch_plan(current, train_config, semi_push_pull and has_anomalies, generator)
    bar.total = bar.n + len(plan) * (train_config.meta_epochs - meta_epoch)  # exact once phase 2 has begun
    sums = {"loss": 0.0, "ml": 0.0, "pull": 0.0, "push": 0.0}
    boundaries = [[] for _ in current]
    for step, (index, rows) in enumerate(plan):
        lr = learning_rate(train_config, meta_epoch, step, len(plan))
        for group in optimizer.param_groups:
            group["lr"] = lr
        data = current[index]
        rows = rows.to(data.vectors.device)
        terms = train_step(
            model_levels[index],
            optimizer,
            data.vectors[rows],
            data.positions[rows],
            data.anomalous[rows],
            loss_config,
            semi_push_pull=semi_push_pull,
            parallel=parallel,
        )
        for key, value in zip(sums, terms[:4], strict=True):
            sums[key] += float(value.detach())
        if not math.isnan(float(terms.b_n)):
            boundaries[index].append((float(terms.b_n), float(terms.b_a)))
        bar.update()
        bar.set_postfix(meta_epoch=meta_epoch, loss=f"{float(terms.total.detach()):.3f}")
    return {
        "meta_epoch": meta_epoch,
        "phase": "bg-spp" if semi_push_pull else "normal-only",
        "steps": len(plan),
        "lr_end": lr,
        **{key: value / len(plan) for key, value in sums.items()},
        "b_n": [_mean([b[0] for b in level_b]) for level_b in boundaries],
        "b_a": [_mean([b[1] for b in level_b]) for level_b in boundaries],
        "seconds": time.perf_counter() - start,
    }


def _resume(
    checkpoint: Path, config: dict | None, flows: nn.Module, optimizer: torch.optim.Adam, generator: torch.Generator
) -> list[dict]:
    """Restore the training state saved in ``checkpoint``; return its history (empty when there is none yet)."""
    state = load_checkpoint(checkpoint)
    if state is None:
        return []
    if state.config != config:
        raise BGADError(
            f"checkpoint {checkpoint} was written with a different configuration: "
            "resume with that configuration or delete the checkpoint"
        )
    try:
        flows.load_state_dict(state.flows)
        optimizer.load_state_dict(state.optimizer)
        generator.set_state(state.generator)
    except (RuntimeError, ValueError, KeyError) as err:
        raise BGADError(f"checkpoint {checkpoint} does not fit this model: {str(err).splitlines()[0]}") from None
    return state.history


def _share_state(
    parallel: DataParallel,
    flows: nn.Module,
    optimizer: torch.optim.Adam,
    generator: torch.Generator,
    history: list[dict],
) -> list[dict]:
    """Give every process process 0's training state (fresh, or resumed from its checkpoint); return its history."""
    main = (flows.state_dict(), optimizer.state_dict(), generator.get_state(), history) if parallel.is_main else None
    flow_state, optimizer_state, generator_state, history = parallel.broadcast(main)
    if not parallel.is_main:
        flows.load_state_dict(flow_state)
        optimizer.load_state_dict(optimizer_state)
        generator.set_state(generator_state)
    return history


def _with_pool(levels: list[LevelData], pool: list[LevelData] | None) -> list[LevelData]:
    """The real levels with a synthetic pool appended; the real levels alone if the pool came out empty."""
    if pool is None:
        return levels
    return [_with_synthetic(level, extra) for level, extra in zip(levels, pool, strict=True)]


def _with_synthetic(level: LevelData, synthetic: LevelData) -> LevelData:
    """Append a synthetic pool's vectors (all from anomalous images) after a level's real training vectors."""
    return LevelData(
        vectors=torch.cat([level.vectors, synthetic.vectors]),
        positions=torch.cat([level.positions, synthetic.positions]),
        anomalous=torch.cat([level.anomalous, synthetic.anomalous]),
        n_normal=level.n_normal,
        n_synthetic=len(synthetic.vectors),
    )


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
