"""Data-parallel training (bgad.runtime.distributed): processes that each take one chunk of every fiber batch train the
flows as one process does with the whole batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing

import bgad
import bgad.method.training
from bgad.config import LossConfig, TrainConfig
from bgad.method.level import FeatureLevel
from bgad.method.training import LevelData, level_data, train_flows
from bgad.runtime.distributed import DataParallel, current

from .conftest import fit_command, interrupt_at

WORLD = 2
# fiber_batch is the whole batch the processes share: 2 processes x 2048 rows against one process x 4096.
TRAIN = TrainConfig(meta_epochs=3, normal_only_meta_epochs=1, warmup_meta_epochs=1, fiber_batch=4096)
LOSS = LossConfig()
# Float32 rounding differs when a sum is split in two. Measured after the 16 steps: the flows of 2 processes differ
# from one process's by at most 3e-8 (training moved them by up to 8e-4), the logged losses and boundaries by 5e-8
# relative; the tolerances leave 30x room.
PARAMETERS = {"rtol": 0.0, "atol": 1e-6}
LOGGED = 1e-6


def _problem() -> tuple[list[FeatureLevel], list[LevelData]]:
    """Two tiny levels with 160 images' vectors each, 16 of them with a defect: 2 steps per level in phase 1 and 3
    in phase 2 at 4096 rows a step, with the BG-SPP terms active. Made the same in every process."""
    generator = torch.Generator().manual_seed(0)
    levels, data = [], []
    for index in range(2):
        level = FeatureLevel(8, (8, 8), normalization="none", condition_dim=8, n_blocks=2, clamp_alpha=1.9, seed=index)
        labels = torch.zeros(160, 8, 8, dtype=torch.bool)
        labels[-16:, 2:5, 2:5] = True  # the anomalous images come last
        vectors = torch.randn(160, 64, 8, generator=generator) + 2 * labels.flatten(1)[..., None]
        levels.append(level)
        data.append(level_data(vectors, labels, n_normal_images=144))
    return levels, data


def _flows(levels: list[FeatureLevel]) -> dict[str, torch.Tensor]:
    return {
        f"{i}.{key}": value.detach().clone()
        for i, level in enumerate(levels)
        for key, value in level.state_dict().items()
    }


def _logged(history: list[dict]) -> list[float]:
    """The loss terms and the mean boundaries of every meta-epoch, in a row (NaN: no boundary in phase 1)."""
    keys = ("loss", "ml", "pull", "push")
    values = [value for r in history for value in [r[key] for key in keys] + r["b_n"] + r["b_a"]]
    return [float("nan") if value is None else value for value in values]


def _worker(rank: int, port: int, folder: Path) -> None:
    """One process: an uninterrupted data-parallel training, then one interrupted at meta-epoch 2 and resumed."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        parallel = current()
        levels, data = _problem()
        own = {"checkpoint": folder / f"checkpoint{rank}", "log_path": folder / f"log{rank}.jsonl"}
        history = train_flows(levels, data, TRAIN, LOSS, config={}, progress=False, parallel=parallel, **own)
        torch.save({"flows": _flows(levels), "logged": _logged(history)}, folder / f"whole{rank}.pt")

        levels, data = _problem()
        resumed = {"checkpoint": folder / f"resumed{rank}", "config": {}, "progress": False, "parallel": parallel}
        original = bgad.method.training.learning_rate
        bgad.method.training.learning_rate = interrupt_at(meta_epoch=2)  # Ctrl-C in every process at the same step
        try:
            train_flows(levels, data, TRAIN, LOSS, **resumed)
        except KeyboardInterrupt:
            pass
        finally:
            bgad.method.training.learning_rate = original
        levels, data = _problem()
        train_flows(levels, data, TRAIN, LOSS, **resumed)  # process 0 resumes; the others get its state
        torch.save({"flows": _flows(levels)}, folder / f"resumed{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder where 2 gloo processes left their results (:func:`_worker`)."""
    folder = tmp_path_factory.mktemp("dp")
    torch.multiprocessing.spawn(_worker, args=(_free_port(), folder), nprocs=WORLD)
    return folder


def test_two_processes_train_the_flows_of_one(two_processes: Path) -> None:
    levels, data = _problem()
    single = train_flows(levels, data, TRAIN, LOSS, progress=False)
    expected = _flows(levels)
    results = [torch.load(two_processes / f"whole{rank}.pt") for rank in range(WORLD)]
    for result in results:
        assert result["flows"].keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(result["flows"][key], value, **PARAMETERS)
        # The losses, and the boundaries b_n, b_a from the gathered log-likelihoods, as one process logs them.
        assert result["logged"] == pytest.approx(_logged(single), rel=LOGGED, nan_ok=True)
    assert sum(record["steps"] for record in single) == 16
    assert all(torch.equal(results[0]["flows"][k], results[1]["flows"][k]) for k in expected)  # in step
    changed = [not torch.equal(value, _flows(_problem()[0])[key]) for key, value in expected.items()]
    assert sum(changed) > len(changed) / 2  # the comparison is of trained flows


def test_process_0_alone_writes_the_checkpoint_and_the_log(two_processes: Path) -> None:
    assert (two_processes / "checkpoint0" / "training.json").is_file()
    assert (two_processes / "log0.jsonl").read_text().count("\n") == TRAIN.meta_epochs
    assert not (two_processes / "checkpoint1").exists()
    assert not (two_processes / "log1.jsonl").exists()


def test_a_resumed_data_parallel_training_equals_an_uninterrupted_one(two_processes: Path) -> None:
    """Process 1's checkpoint folder is never written: its state after the restart came from process 0."""
    assert not (two_processes / "resumed1").exists()
    whole = torch.load(two_processes / "whole0.pt")["flows"]
    for rank in range(WORLD):
        resumed = torch.load(two_processes / f"resumed{rank}.pt")["flows"]
        assert all(torch.equal(resumed[key], whole[key]) for key in whole)


def test_chunks_cover_a_batch_once_in_order() -> None:
    for n in (1, 7, 4096):
        groups = [DataParallel(rank, 3) for rank in range(3)]
        rows = torch.cat([torch.arange(n)[group.chunk(n)] for group in groups])
        assert torch.equal(rows, torch.arange(n))
        assert [len(chunk) for chunk in torch.arange(n).tensor_split(3)] == groups[0].sizes(n)


@pytest.mark.slow
def test_torchrun_fit_writes_one_run_that_matches_a_single_process_fit(
    tiny_dataset: Path, config_file: Path, tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``torchrun --nproc_per_node 2 -m bgad fit`` on the CPU, then a resume of a fit interrupted in one process."""
    from bgad.app.cli import main

    source = str(Path(bgad.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": source, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD), "-m"]
    output = tmp_path / "run"
    done = subprocess.run(
        [*torchrun, "bgad", *fit_command(tiny_dataset, output, config_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)  # one JSON document: process 0 alone reports
    expected = json.loads((tiny_run / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro"):
        assert metrics[key] == pytest.approx(expected[key], abs=0.01)
    assert sorted(p.name for p in output.iterdir()) == sorted(p.name for p in tiny_run.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing else beside it, no partial, no lock

    interrupted = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        patch.setattr(bgad.method.training, "learning_rate", interrupt_at(meta_epoch=2))
        assert main(fit_command(tiny_dataset, interrupted, config_file)) == 130
    done = subprocess.run(
        [*torchrun, "bgad", "fit", "--resume", str(interrupted), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    resumed = json.loads(done.stdout)
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro"):
        assert resumed[key] == pytest.approx(expected[key], abs=0.01)
