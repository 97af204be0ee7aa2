import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import bgad.app.benchmark
import bgad.app.processes
from bgad.app.baselines import GaussianBaseline, PadimBaseline, fit_gaussians, gaussian_blur, mahalanobis
from bgad.app.benchmark import METHODS
from bgad.app.cli import main
from bgad.app.processes import run_in_processes
from bgad.config import BGADConfig, TrainConfig
from bgad.data.layouts import load_mvtec
from bgad.data.samples import Split, make_split
from bgad.evaluation import evaluate

pytestmark = pytest.mark.slow  # trains models end to end

METRICS = ["image_auroc", "pixel_auroc", "pixel_aupro", "image_ap", "pixel_ap"]


def _benchmark(data_root: Path, output: Path, *extra: str) -> tuple[int, float]:
    args = ["benchmark", "--data-root", str(data_root), "--output", str(output), "--seeds", "0,1", *extra, "--quiet"]
    start = time.perf_counter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")  # the spawned workers: no thread oversubscription on a busy machine
        code = main(args)
    return code, time.perf_counter() - start


@pytest.fixture(scope="module")
def benchmark(tiny_dataset: Path, config_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    output = tmp_path_factory.mktemp("bench") / "out"
    code, seconds = _benchmark(tiny_dataset, output, "--config", str(config_file))
    assert code == 0
    return output, seconds


def test_benchmark_writes_csv_and_markdown(benchmark: tuple[Path, float]) -> None:
    output, _ = benchmark
    with open(output / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["seed"], r["method"]) for r in rows) == [(s, m) for s in ("0", "1") for m in sorted(METHODS)]
    for row in rows:
        assert row["category"] == "part"
        for key in METRICS:
            assert 0 <= float(row[key]) <= 1, (row["method"], key)
        for key in ["train_seconds", "inference_ms", "peak_rss_mb"]:
            assert float(row[key]) > 0, (row["method"], key)
    markdown = (output / "results.md").read_text()
    assert "## bgad" in markdown
    assert "## gaussian" in markdown
    assert "## padim" in markdown
    assert "## padim_unsmoothed_imagenet" in markdown
    assert "## bgad minus the best floor" in markdown
    assert "| part |" in markdown
    assert "0.994 / 0.993" in markdown
    for seed in (0, 1):
        result = json.loads((output / "runs" / "part" / f"seed{seed}" / "benchmark.json").read_text())
        assert result["seed"] == seed
        assert result["config"]["train"]["seed"] == seed
        assert set(result["methods"]) == set(METHODS)


@pytest.mark.parametrize("older", [False, True], ids=["same-bgad", "before-a-config-field"])
def test_benchmark_resumes_finished_tasks(
    benchmark: tuple[Path, float],
    tiny_dataset: Path,
    config_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    older: bool,
) -> None:
    output, _ = benchmark
    if older:  # results of a bgad without a config field since added: at its default, the same config
        output = Path(shutil.copytree(output, tmp_path / "bench"))
        for path in (output / "runs").glob("*/*/benchmark.json"):
            result = json.loads(path.read_text())
            del result["config"]["train"]["update_synthesis_refresh"]
            path.write_text(json.dumps(result))
    metrics = sorted((output / "runs").glob("*/*/metrics.json"))
    assert len(metrics) == 2
    mtimes = [p.stat().st_mtime_ns for p in metrics]
    capsys.readouterr()
    code, _ = _benchmark(tiny_dataset, output, "--config", str(config_file))
    assert code == 0
    assert [p.stat().st_mtime_ns for p in metrics] == mtimes
    assert capsys.readouterr().err.count("already done") == 2


def test_benchmark_refuses_results_of_another_config(
    benchmark: tuple[Path, float],
    tiny_dataset: Path,
    tiny_config: BGADConfig,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output, _ = benchmark
    other = tiny_config.to_dict()
    other["train"]["fiber_batch"] = 128
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    capsys.readouterr()
    assert _benchmark(tiny_dataset, output, "--config", str(tmp_path / "other.yaml"))[0] == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bgad: error:")
    assert "another config" in err


def _csv_metrics(path: Path) -> list[tuple[str, ...]]:
    """The rows of a results.csv without its cost columns (timings and memory differ from run to run)."""
    with open(path, newline="") as handle:
        return [(r["category"], r["seed"], r["method"], *(r[k] for k in METRICS)) for r in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def two_shards(tiny_dataset: Path, config_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Shard 0/2, --collect (shard 1 missing), shard 1/2, --collect again, into one output folder: what each step
    left behind."""
    output = tmp_path_factory.mktemp("shards") / "out"
    steps: dict = {"output": output}
    collect = ["benchmark", "--collect", "--output", str(output)]
    assert _benchmark(tiny_dataset, output, "--config", str(config_file), "--shard", "0/2")[0] == 0
    steps["after_shard_0"] = sorted(str(p.relative_to(output)) for p in output.rglob("benchmark.json"))
    steps["table_after_shard_0"] = (output / "results.csv").exists()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        steps["partial_code"] = main(collect)
    steps["partial_err"] = err.getvalue().strip()
    steps["partial_md"] = (output / "results.md").read_text()
    steps["partial_csv"] = _csv_metrics(output / "results.csv")
    assert _benchmark(tiny_dataset, output, "--config", str(config_file), "--shard", "1/2")[0] == 0
    steps["code"] = main(collect)
    return steps


def test_each_shard_runs_only_its_tasks_and_writes_no_table(two_shards: dict) -> None:
    assert two_shards["after_shard_0"] == [str(Path("runs", "part", "seed0", "benchmark.json"))]
    assert not two_shards["table_after_shard_0"]


def test_two_shards_collected_give_the_unsharded_table(two_shards: dict, benchmark: tuple[Path, float]) -> None:
    unsharded, _ = benchmark
    output = two_shards["output"]
    assert two_shards["code"] == 0
    rows = _csv_metrics(output / "results.csv")
    assert len(rows) == 2 * len(METHODS)  # 2 seeds x (bgad and the floors)
    assert rows == _csv_metrics(unsharded / "results.csv")
    markdown = (output / "results.md").read_text()
    assert "Incomplete" not in markdown
    assert "collected from 2 shard(s)" in markdown

    def method_tables(text: str) -> list[str]:  # the table rows, without the cost columns
        return [line.split(" | ")[:6] for line in text.splitlines() if line.startswith("| part |")]

    assert method_tables(markdown) == method_tables((unsharded / "results.md").read_text())


def test_collect_with_a_shard_missing_writes_what_finished_and_fails(two_shards: dict) -> None:
    assert two_shards["partial_code"] == 2
    err = two_shards["partial_err"]
    assert len(err.splitlines()) == 1, err
    assert err.startswith("bgad: error: 1 of 2 task(s) have no result (part seed 1); rerun shard(s) 1/2")
    assert "**Incomplete: 1 of 2 task(s) have no result**" in two_shards["partial_md"]
    assert "part seed 1. The tables" in two_shards["partial_md"]
    assert sorted({(row[1], row[2]) for row in two_shards["partial_csv"]}) == [("0", m) for m in sorted(METHODS)]


def test_shards_split_the_tasks_whatever_the_order_of_the_lists(tmp_path: Path, tiny_config: BGADConfig) -> None:
    def shards(names: list[str], seeds: list[int], count: int) -> list[list[tuple[str, int]]]:
        tasks = bgad.app.benchmark.benchmark_tasks(
            tmp_path, names, seeds, tiny_config, tmp_path, False, threads=1, progress=False
        )
        return [[(t.category, t.seed) for t in bgad.app.benchmark.shard_of(tasks, (k, count))] for k in range(count)]

    split = shards(["b", "a", "c"], [1, 0], 4)
    assert split == shards(["a", "c", "b"], [0, 1], 4)
    assert split == [[("a", 0), ("c", 0)], [("a", 1), ("c", 1)], [("b", 0)], [("b", 1)]]


def test_collect_refuses_other_settings_and_a_folder_without_a_benchmark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    collect = ["benchmark", "--collect", "--output", str(tmp_path)]
    for extra, needle in [(["--data-root", str(tmp_path)], "drop --data-root"), ([], "plan.json not found")]:
        assert main([*collect, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith("bgad: error:"), err
        assert needle in err, err
    assert main(["benchmark", "--output", str(tmp_path)]) == 2
    assert "--data-root is required" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--seeds", "0,x", "argument --seeds"),
        ("--seeds", "0,,1", "argument --seeds"),
        ("--jobs", "0", "--jobs"),
        ("--shard", "2/2", "argument --shard: a shard is I/N with 0 <= I < N"),
        ("--shard", "0/0", "argument --shard: a shard is I/N"),
        ("--shard", "1", "argument --shard: a shard is I/N"),
        ("--shard", "a/2", "argument --shard: a shard is I/N"),
        ("--shard", "-1/2", "argument --shard"),
    ],
)
def test_benchmark_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, needle: str
) -> None:
    args = ["benchmark", "--data-root", str(tmp_path), "--output", str(tmp_path / "out"), flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("bgad: error:")
    assert needle in err
    assert not (tmp_path / "out").exists()


def test_mahalanobis_is_zero_at_the_mean_and_grows_away_from_it() -> None:
    # Two positions, 2-D vectors: position 0 spread along x, position 1 along y.
    vectors = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 1.0]],
            [[-1.0, 0.0], [0.0, -1.0]],
            [[3.0, 0.0], [0.0, 3.0]],
            [[-3.0, 0.0], [0.0, -3.0]],
        ]
    )  # (N=4, P=2, C=2)
    mean, precision = fit_gaussians(vectors, epsilon=0.01)
    torch.testing.assert_close(mean, torch.zeros(2, 2))
    variance = (1 + 1 + 9 + 9) / 3
    expected = torch.linalg.inv(torch.diag(torch.tensor([variance, 0.0])) + 0.01 * torch.eye(2))
    torch.testing.assert_close(precision[0], expected, rtol=1e-4, atol=1e-4)
    at_mean = mahalanobis(torch.zeros(1, 2, 2), mean, precision)
    torch.testing.assert_close(at_mean, torch.zeros(1, 2))
    # One unit along each position's spread direction is 1/sqrt(variance + eps) ...
    along = mahalanobis(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), mean, precision)
    torch.testing.assert_close(along, torch.full((1, 2), (variance + 0.01) ** -0.5))
    # ... and across it, where the training data never varied, it is 1/sqrt(eps) = 10.
    across = mahalanobis(torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]), mean, precision)
    torch.testing.assert_close(across, torch.full((1, 2), 10.0), rtol=1e-4, atol=1e-4)
    far = mahalanobis(torch.tensor([[[10.0, 0.0], [0.0, 10.0]]]), mean, precision)
    assert (far > along).all()


@pytest.mark.parametrize("floor", [GaussianBaseline, PadimBaseline])
def test_baseline_maps_and_evaluation(tiny_dataset: Path, tiny_config: BGADConfig, floor: type) -> None:
    category = load_mvtec(tiny_dataset, "part")
    baseline = floor(tiny_config).fit([s.path for s in category.train])
    assert baseline.train_seconds_ > 0
    maps = baseline.anomaly_maps([s.path for s in category.test[:3]], batch_size=2)
    assert maps.shape == (3, 64, 64)
    assert torch.isfinite(maps).all()
    assert (maps >= 0).all()
    known = make_split(category, TrainConfig(num_anomalies=3, seed=0)).known
    metrics = evaluate(baseline, Split(category, known).evaluation, progress=False).metrics().as_dict()
    assert all(0 <= metrics[key] <= 1 for key in METRICS)


def test_padim_fits_one_gaussian_on_strides_8_and_16_concatenated(tiny_dataset: Path, tiny_config: BGADConfig) -> None:
    category = load_mvtec(tiny_dataset, "part")
    baseline = PadimBaseline(tiny_config).fit([s.path for s in category.train])
    side = tiny_config.model.image_size // 8
    assert [m.shape for m in baseline.means_] == [(side * side, 40 + 112)]  # EfficientNet-Lite0's channels


def test_gaussian_blur_matches_scipy() -> None:
    from scipy.ndimage import gaussian_filter

    maps = torch.rand(2, 23, 31, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = [gaussian_filter(m, sigma=4, mode="mirror", truncate=4.0) for m in maps.numpy()]
    torch.testing.assert_close(gaussian_blur(maps, 4.0), torch.tensor(np.stack(expected)))


def _dies_for_1(task: int) -> int:
    """A stand-in task (runs in its own spawned process): the process of task 1 is killed, as by the OOM killer."""
    if task == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return 10 * task


@pytest.mark.skipif(os.name != "posix", reason="kills a task's process with SIGKILL")
def test_a_dead_task_process_fails_only_its_own_task() -> None:
    finished = list(run_in_processes([0, 1, 2, 3], 2, _dies_for_1))
    assert sorted((task, result) for task, result, failure in finished if failure is None) == [(0, 0), (2, 20), (3, 30)]
    failed = [(task, failure) for task, _, failure in finished if failure is not None]
    assert len(failed) == 1
    assert failed[0][0] == 1
    assert failed[0][1].startswith("its process died (exit code -9")


_ORPHAN_SCRIPT = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing
from bgad.app.processes import die_with_parent

def record_pid(path):
    open(path, "w").write(str(os.getpid()))
    time.sleep(60)

if __name__ == "__main__":
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent,
                               initargs=(os.getpid(),))
    pool.submit(record_pid, sys.argv[1])
    while not os.path.exists(sys.argv[1]) or not open(sys.argv[1]).read():
        time.sleep(0.05)
    os._exit(0)  # the benchmark process dies without cleaning up, as with kill -9
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_workers_die_with_a_killed_benchmark(tmp_path: Path) -> None:
    script, pid_file = tmp_path / "orphan.py", tmp_path / "worker.pid"
    script.write_text(_ORPHAN_SCRIPT)
    subprocess.run([sys.executable, str(script), str(pid_file)], check=True, timeout=60)
    worker = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{worker}").exists():
        if Path(f"/proc/{worker}/stat").read_text().split()[2] == "Z":
            break  # a zombie: dead, waiting for init to reap it
        time.sleep(0.1)
    alive = Path(f"/proc/{worker}").exists() and Path(f"/proc/{worker}/stat").read_text().split()[2] != "Z"
    assert not alive, "the worker outlived the benchmark process"


def test_usable_cpus_follows_the_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
        assert bgad.app.processes.usable_cpus() <= 3
    assert bgad.app.processes.usable_cpus() >= 1
