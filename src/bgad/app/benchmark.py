"""``bgad benchmark``: BGAD and four one-class Gaussian floors over categories x seeds, with cost figures.

Each (category, seed) task runs in its own child process (:mod:`bgad.app.processes`), so the peak memory it reports
is its own; :mod:`bgad.app.tables` writes the results. A task
trains, saves and evaluates BGAD into ``OUTPUT/runs/<category>/seed<seed>/`` (:func:`bgad.app.runs.fit_run`),
times its inference and, optionally, fits and evaluates the floors of :mod:`bgad.app.baselines` (``gaussian``,
``padim`` and its unsmoothed variants) on the same category with the same known anomalies left out of the
evaluation. Its result is written last, as ``benchmark.json`` in the run folder; a task whose result exists is
skipped on the next call (resume). ``OUTPUT/results.csv`` and ``OUTPUT/results.md`` are rewritten from all
results at the end.

Many machines: the tasks, sorted by (category, seed), are split round-robin into shards; a call with
``shard=(i, n)`` runs only the tasks whose index mod n is i and writes no table (shards run at once into one shared
output folder). Every call writes the whole benchmark's settings to ``OUTPUT/plan.json`` before its tasks run;
from it, :func:`collect_benchmark` rebuilds the task list and writes the tables from the stored results.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..config import BGADConfig, load_config
from ..data.layouts import DatasetSpec, load_mvtec
from ..data.samples import GOOD, Split
from ..detector import BGAD
from ..errors import BGADError, DatasetError
from ..evaluation import decision_summary, evaluate
from ..method.thresholds import fit_thresholds
from ..runtime.devices import resolve_device
from ..storage.serialization import write_json
from .baselines import GaussianBaseline, PadimBaseline, UnsmoothedPadim, UnsmoothedPadimImagenet
from .processes import run_in_processes, usable_cpus
from .runs import fit_run
from .speed import inference_speed, median_seconds
from .tables import INFERENCE_REPEATS, METRICS, write_tables

RESULT_JSON = "benchmark.json"
PLAN_JSON = "plan.json"
BASELINES = {  # one-class floors, see bgad.app.baselines
    "gaussian": GaussianBaseline,
    "padim": PadimBaseline,
    "padim_unsmoothed": UnsmoothedPadim,
    "padim_unsmoothed_imagenet": UnsmoothedPadimImagenet,
}
METHODS = ("bgad", *BASELINES)


@dataclass(frozen=True)
class BenchmarkTask:
    data_root: Path
    category: str
    seed: int
    config: BGADConfig
    run_dir: Path
    baseline: bool
    threads: int | None  # torch threads in the worker; None keeps torch's default
    progress: bool
    device: str = "cpu"  # where BGAD trains and is timed (the one-class floors run on the CPU)


def _log(message: str) -> None:
    print(f"bgad benchmark: {message}", file=sys.stderr, flush=True)


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far (ru_maxrss: KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _baseline(task: BenchmarkTask, method: str, split: Split) -> dict[str, float]:
    """Fit and evaluate a floor on BGAD's split (normal images only; the known anomalies are left out of the
    evaluation)."""
    baseline = BASELINES[method](task.config).fit([s.path for s in split.train], progress=task.progress)
    evaluation = evaluate(baseline, split.evaluation, progress=task.progress)
    metrics = evaluation.metrics().as_dict()
    known = evaluate(baseline, split.known, progress=False) if split.known else None
    thresholds = fit_thresholds(
        baseline.normal_maps_,
        None if known is None else torch.from_numpy(known.anomaly_maps),
        None if known is None else torch.from_numpy(known.masks),
        task.config.threshold,
    )
    size = task.config.model.image_size
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    seconds = median_seconds(lambda: baseline.maps_from_tensor(image), repeats=INFERENCE_REPEATS, warmup=3)
    return {
        **{k: metrics[k] for k in METRICS},
        **decision_summary(evaluation.decisions(thresholds)),
        "train_seconds": round(baseline.train_seconds_, 1),
        "inference_ms": round(1000 * seconds, 3),
        "peak_rss_mb": _peak_rss_mb(),
    }


def _run_task(task: BenchmarkTask) -> dict[str, Any]:
    """One (category, seed): runs in a fresh child process; writes and returns the task's result."""
    if task.threads is not None:
        torch.set_num_threads(task.threads)
    _log(f"{task.category} seed {task.seed}: started (pid {os.getpid()}, {torch.get_num_threads()} torch threads)")
    start = time.perf_counter()
    methods = {}

    def fit_floors(split: Split) -> None:
        # Before BGAD trains: ru_maxrss is a high-water mark, so the lighter methods must be measured first.
        for method in BASELINES if task.baseline else ():
            methods[method] = _baseline(task, method, split)

    dataset = DatasetSpec("mvtec", {"data_root": str(task.data_root.absolute()), "category": task.category})
    options = {"progress": task.progress, "on_split": fit_floors, "device": task.device}
    results = fit_run(dataset, task.run_dir, task.config, overwrite=True, **options)
    metrics = results.metrics.as_dict()
    model = BGAD.load(task.run_dir).to(task.device).model_.eval()
    speed = inference_speed(model, batch_size=1, repeats=INFERENCE_REPEATS)
    methods["bgad"] = {
        **{k: metrics[k] for k in METRICS},
        **decision_summary(results.decisions),
        "train_seconds": results.train_seconds,
        "inference_ms": speed["end_to_end_ms"],
        "peak_rss_mb": _peak_rss_mb(),
    }
    result = {
        "category": task.category,
        "seed": task.seed,
        "data_root": str(task.data_root.resolve()),
        "config": task.config.to_dict(),
        "n_known_anomalies": results.n_known_anomalies,
        "n_eval_images": metrics["n_eval_images"],
        "torch_threads": torch.get_num_threads(),
        "task_seconds": round(time.perf_counter() - start, 1),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bgad_version": __version__,
        "methods": {m: methods[m] for m in METHODS if m in methods},
    }
    write_json(task.run_dir / RESULT_JSON, result)
    return result


def _stored_result(task: BenchmarkTask) -> dict[str, Any] | None:
    """The task's earlier result if it can be reused; an error if it was made with other settings."""
    path = task.run_dir / RESULT_JSON
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # damaged: run the task again
    try:  # a field added since, at its default, is the same config
        same_config = BGADConfig.from_dict(result.get("config", {})) == task.config
    except (BGADError, TypeError, AttributeError):
        same_config = False
    if not same_config or result.get("data_root") != str(task.data_root.resolve()):
        raise BGADError(f"{path} was made with another config or data root; use another --output or delete it")
    if task.baseline and not set(BASELINES) <= set(result.get("methods", {})):
        return None  # made with --no-baseline (or before a baseline existed): run again with the baselines
    return result


def find_categories(data_root: Path) -> list[str]:
    """Every folder under ``data_root`` with a ``train/good`` folder, sorted."""
    if not data_root.is_dir():
        raise BGADError(f"data root not found: {data_root}")
    found = sorted(p.name for p in data_root.iterdir() if (p / "train" / GOOD).is_dir())
    if not found:
        raise BGADError(f"no categories under {data_root} (a category is a folder with train/{GOOD})")
    return found


def _summary(result: dict[str, Any]) -> str:
    return ", ".join(
        f"{m} image/pixel AUROC {v['image_auroc']:.3f}/{v['pixel_auroc']:.3f}" for m, v in result["methods"].items()
    )


def _execute(
    tasks: list[BenchmarkTask],
    jobs: int,
    results: dict[tuple[str, int], dict[str, Any]],
    run: Callable[[BenchmarkTask], dict[str, Any]] = _run_task,
) -> list[str]:
    """Run the tasks in their own processes (:func:`bgad.app.processes.run_in_processes`), logging each as it
    ends; fill ``results``; return one line per failed task."""
    failures = []
    for done, (task, result, failure) in enumerate(run_in_processes(tasks, jobs, run), start=1):
        name = f"[{done}/{len(tasks)}] {task.category} seed {task.seed}"
        if failure is None:
            results[(task.category, task.seed)] = result
            _log(f"{name}: done in {result['task_seconds']:.0f} s: {_summary(result)}")
        else:
            failures.append(f"{task.category} seed {task.seed}: {failure}")
            _log(f"{name}: failed: {failure}")
    return failures


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)``: shard i (0-based) of n, as a job array's index and size give it."""
    index, slash, count = text.partition("/")
    if not (slash and index.isdigit() and count.isdigit()) or not 0 <= int(index) < int(count):
        raise BGADError(f"a shard is I/N with 0 <= I < N (e.g. 0/4 ... 3/4), got {text!r}")
    return int(index), int(count)


def benchmark_tasks(
    data_root: Path, names: list[str], seeds: Sequence[int], base: BGADConfig, output: Path, baseline: bool, **run: Any
) -> list[BenchmarkTask]:
    """Every (category, seed) task of a benchmark, in table order (``run``: the worker's threads and progress)."""
    tasks = []
    for name in names:
        for seed in seeds:
            config = BGADConfig.from_dict({"train": {"seed": seed}}, base=base)
            tasks.append(
                BenchmarkTask(data_root, name, seed, config, output / "runs" / name / f"seed{seed}", baseline, **run)
            )
    return tasks


def shard_of(tasks: list[BenchmarkTask], shard: tuple[int, int]) -> list[BenchmarkTask]:
    """The tasks of shard ``(i, n)``: those whose index in (category, seed) order is i mod n. The order does not
    depend on the order of ``--categories`` or ``--seeds``, so shards given the same lists in another order agree."""
    index, count = shard
    ordered = sorted(tasks, key=lambda task: (task.category, task.seed))
    return [task for k, task in enumerate(ordered) if k % count == index]


def _write_plan(output: Path, plan: dict[str, Any]) -> None:
    """Write ``plan.json`` atomically: the shards of one benchmark write the same plan at the same time."""
    output.mkdir(parents=True, exist_ok=True)
    temporary = output / f".{PLAN_JSON}.{platform.node()}.{os.getpid()}"  # one per process, even across machines
    write_json(output / PLAN_JSON, plan, temporary=temporary)


def _read_plan(output: Path) -> dict[str, Any]:
    path = output / PLAN_JSON
    if not path.is_file():
        raise BGADError(f"{path} not found: no benchmark was started in {output} (run bgad benchmark --output there)")
    try:
        plan = json.loads(path.read_text())
        keys = {"data_root", "categories", "seeds", "preset", "config", "baseline", "shards"}
        if not isinstance(plan, dict) or not keys <= set(plan):
            raise ValueError
        return plan
    except ValueError:
        raise BGADError(f"{path} is damaged; rerun one shard (or the whole benchmark) to rewrite it") from None


def run_benchmark(
    data_root: str | Path,
    output: str | Path,
    *,
    categories: list[str] | None = None,
    preset: str = "default",
    seeds: Sequence[int] = (0,),
    jobs: int = 1,
    baseline: bool = True,
    config_file: str | Path | None = None,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    device: str = "cpu",
) -> Path | None:
    """Benchmark BGAD (and the Gaussian baseline) on ``categories`` x ``seeds``; return the path of results.md.

    ``categories`` defaults to every folder of ``data_root`` with ``train/good``. Settings: ``preset``, then the
    YAML ``config_file`` on top, then ``train.seed`` = each seed. Tasks already done in ``output`` are reused.
    With ``shard=(i, n)``, n > 1, only shard i's tasks run and no table is written (None is returned): once every
    shard has finished, :func:`collect_benchmark` writes it. BGAD trains and is timed on ``device``.
    """
    resolve_device(device)  # a missing GPU fails before any task starts
    data_root, output = Path(data_root), Path(output)
    if not seeds:
        raise BGADError("no seeds given")
    if len(set(seeds)) != len(seeds):
        raise BGADError(f"seeds repeat: {', '.join(map(str, seeds))}")
    if jobs < 1:
        raise BGADError(f"jobs must be at least 1, got {jobs}")
    index, count = parse_shard(f"{shard[0]}/{shard[1]}")
    base = load_config(preset, config_file)
    names = find_categories(data_root) if categories is None else list(dict.fromkeys(categories))
    if not names:
        raise BGADError("no categories given")
    threads = max(1, usable_cpus() // jobs) if jobs > 1 else None
    run = {"threads": threads, "progress": progress and jobs == 1, "device": device}
    every = benchmark_tasks(data_root, names, seeds, base, output, baseline, **run)
    mine = shard_of(every, (index, count))
    for name in dict.fromkeys(task.category for task in mine):
        category = load_mvtec(data_root, name)  # fail early, before any process starts
        if category.problems:
            raise DatasetError(category.problems)
    results: dict[tuple[str, int], dict[str, Any]] = {}
    tasks = []
    for task in mine:
        stored = _stored_result(task)
        if stored is None:
            tasks.append(task)
        else:
            results[(task.category, task.seed)] = stored
            _log(f"{task.category} seed {task.seed}: already done, reusing {task.run_dir / RESULT_JSON}")
    plan = {
        "data_root": str(data_root.resolve()),
        "categories": names,
        "seeds": list(seeds),
        "preset": preset + (f" + {config_file}" if config_file else ""),
        "config": base.to_dict(),
        "baseline": baseline,
        "shards": count,
    }
    _write_plan(output, plan)  # after every check: a refused call leaves the plan of the last accepted one
    if count > 1:
        _log(f"shard {index}/{count}: {len(mine)} of the {len(every)} tasks, {len(tasks)} to run")
    failures = _execute(tasks, jobs, results) if tasks else []
    if count > 1:
        if failures:
            raise BGADError(
                f"shard {index}/{count}: {len(failures)} of {len(mine)} task(s) failed (first: {failures[0]}); "
                f"the others' results are in {output / 'runs'}"
            )
        return None
    jobs_note = f"{jobs} (tasks ran side by side: timings include that contention)" if jobs > 1 else "1"
    md, _ = write_tables(output, plan, results, {"jobs": jobs_note}, METHODS)
    if failures:
        raise BGADError(f"{len(failures)} of {len(every)} task(s) failed (first: {failures[0]}); the rest are in {md}")
    return md


def collect_benchmark(output: str | Path) -> Path:
    """Write ``results.csv`` and ``results.md`` of the benchmark started in ``output`` (by any number of shards)
    from the results its tasks stored; return the path of results.md.

    Tasks without a result are listed in results.md and left out of the tables; then this raises a
    :class:`BGADError` naming them (and their shards) after writing, so a script never takes a partial table for a
    whole one, while a person still sees everything that finished.
    """
    output = Path(output)
    plan = _read_plan(output)
    base = BGADConfig.from_dict(plan["config"])
    data_root, baseline = Path(plan["data_root"]), plan["baseline"]
    every = benchmark_tasks(
        data_root, plan["categories"], plan["seeds"], base, output, baseline, threads=None, progress=False
    )
    results = {(task.category, task.seed): result for task in every if (result := _stored_result(task)) is not None}
    count = plan["shards"]
    md, missing = write_tables(output, plan, results, {"tasks": f"collected from {count} shard(s)"}, METHODS)
    if missing:
        absent = set(missing)
        shards = [k for k in range(count) if any((t.category, t.seed) in absent for t in shard_of(every, (k, count)))]
        names = ", ".join(f"{name} seed {seed}" for name, seed in missing[:5]) + (", ..." if len(missing) > 5 else "")
        if count > 1:
            which = ", ".join(f"{k}/{count}" for k in shards)
            rerun = f"rerun shard(s) {which} (finished tasks are reused), then --collect"
        else:
            rerun = "rerun the benchmark (finished tasks are reused)"
        raise BGADError(
            f"{len(missing)} of {len(every)} task(s) have no result ({names}); {rerun}; the rest are in {md}"
        )
    return md
