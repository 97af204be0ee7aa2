"""``bgad benchmark``: BGAD and four one-class Gaussian floors over categories x seeds, with cost figures.

Each (category, seed) task runs in its own child process, so the peak memory it reports is its own. A task
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

import csv
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import suppress
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
from ..devices import resolve_device
from ..errors import BGADError, DatasetError
from ..evaluation import DECISIONS, decision_summary, evaluate
from ..method.thresholds import fit_thresholds
from ..serialization import write_atomic
from .baselines import GaussianBaseline, PadimBaseline, UnsmoothedPadim, UnsmoothedPadimImagenet
from .runs import fit_run
from .speed import inference_speed, median_seconds

RESULT_JSON = "benchmark.json"
PLAN_JSON = "plan.json"
BASELINES = {  # one-class floors, see bgad.app.baselines
    "gaussian": GaussianBaseline,
    "padim": PadimBaseline,
    "padim_unsmoothed": UnsmoothedPadim,
    "padim_unsmoothed_imagenet": UnsmoothedPadimImagenet,
}
METHODS = ("bgad", *BASELINES)
METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro", "image_ap", "pixel_ap")
COSTS = ("train_seconds", "inference_ms", "peak_rss_mb")
CSV_COLUMNS = ("category", "seed", "method", *METRICS, *DECISIONS, *COSTS)
INFERENCE_REPEATS = 5
# The only verified paper figure: the official code's comment on its MVTec AD command (see the md footnote).
PAPER_MVTEC_MEAN = {"image_auroc": 0.994, "pixel_auroc": 0.993}
MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip


@dataclass(frozen=True)
class _Task:
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


def _baseline(task: _Task, method: str, split: Split) -> dict[str, float]:
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


def _run_task(task: _Task) -> dict[str, Any]:
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
    (task.run_dir / RESULT_JSON).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _stored_result(task: _Task) -> dict[str, Any] | None:
    """The task's earlier result if it can be reused; an error if it was made with other settings."""
    path = task.run_dir / RESULT_JSON
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # damaged: run the task again
    if result.get("config") != task.config.to_dict() or result.get("data_root") != str(task.data_root.resolve()):
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
    tasks: list[_Task],
    jobs: int,
    results: dict[tuple[str, int], dict[str, Any]],
    run: Callable[[_Task], dict[str, Any]] = _run_task,
) -> list[str]:
    """Run each task in its own child process, ``jobs`` at a time; fill ``results``; return one line per failed
    task. A child that dies (killed for memory, say) fails its own task only."""
    context = multiprocessing.get_context("spawn")
    queue, failures = list(tasks), []
    running: dict[Any, tuple[Any, Any, _Task]] = {}  # process sentinel -> (process, result pipe, task)
    outcomes: dict[Any, tuple[str, Any]] = {}
    try:
        while queue or running:
            while queue and len(running) < jobs:
                task = queue.pop(0)
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(target=_child, args=(run, task, sender, os.getpid()), daemon=True)
                process.start()
                sender.close()
                running[process.sentinel] = (process, receiver, task)
            pipes = {receiver: sentinel for sentinel, (_, receiver, _) in running.items()}
            ready = multiprocessing.connection.wait([*running, *pipes])
            for pipe in (r for r in ready if r in pipes):  # read results as they come: no child blocks on a pipe
                with suppress(EOFError):
                    outcomes[pipes[pipe]] = pipe.recv()
            for sentinel in (r for r in ready if r in running):
                process, receiver, task = running.pop(sentinel)
                process.join()
                outcome = outcomes.pop(sentinel, None)
                if outcome is None and receiver.poll():
                    with suppress(EOFError):
                        outcome = receiver.recv()
                receiver.close()
                _record(task, outcome, process.exitcode, len(tasks) - len(queue) - len(running), len(tasks))
                if outcome is not None and outcome[0] == "ok":
                    results[(task.category, task.seed)] = outcome[1]
                else:
                    failures.append(_failure(task, outcome, process.exitcode))
    finally:
        for process, _, _ in running.values():
            process.kill()
    return failures


def _child(run: Callable[[_Task], dict[str, Any]], task: _Task, sender: Any, parent: int) -> None:
    """A task's process: runs it and sends ``("ok", result)`` or ``("error", message)``."""
    _die_with_parent(parent)
    try:
        outcome = ("ok", run(task))
    except BGADError as err:
        outcome = ("error", str(err))
    except Exception as err:  # a bug: its traceback goes to this process's stderr, the benchmark goes on
        traceback.print_exc()
        outcome = ("error", f"{type(err).__name__}: {err}")
    sender.send(outcome)
    sender.close()


def _failure(task: _Task, outcome: tuple[str, Any] | None, exitcode: int | None) -> str:
    if outcome is None:
        return f"{task.category} seed {task.seed}: its process died (exit code {exitcode}; out of memory?)"
    return f"{task.category} seed {task.seed}: {outcome[1]}"


def _record(task: _Task, outcome: tuple[str, Any] | None, exitcode: int | None, done: int, total: int) -> None:
    name = f"[{done}/{total}] {task.category} seed {task.seed}"
    if outcome is not None and outcome[0] == "ok":
        _log(f"{name}: done in {outcome[1]['task_seconds']:.0f} s: {_summary(outcome[1])}")
    else:
        _log(f"{name}: failed: {_failure(task, outcome, exitcode).split(': ', 1)[1]}")


def _die_with_parent(parent: int) -> None:
    """Worker start-up: on Linux, ask the kernel to kill this worker when the benchmark process dies (a killed
    benchmark must not leave workers writing into its run folders); elsewhere, at least not start orphaned."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def usable_cpus() -> int:
    """CPUs this process may use: its CPU affinity and, in a container, the cgroup's CPU quota (``os.cpu_count``
    sees neither)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 CPU limit readable here
    return max(1, cpus)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)``: shard i (0-based) of n, as a job array's index and size give it."""
    index, slash, count = text.partition("/")
    if not (slash and index.isdigit() and count.isdigit()) or not 0 <= int(index) < int(count):
        raise BGADError(f"a shard is I/N with 0 <= I < N (e.g. 0/4 ... 3/4), got {text!r}")
    return int(index), int(count)


def _tasks(
    data_root: Path, names: list[str], seeds: Sequence[int], base: BGADConfig, output: Path, baseline: bool, **run: Any
) -> list[_Task]:
    """Every (category, seed) task of a benchmark, in table order (``run``: the worker's threads and progress)."""
    tasks = []
    for name in names:
        for seed in seeds:
            config = BGADConfig.from_dict({"train": {"seed": seed}}, base=base)
            tasks.append(_Task(data_root, name, seed, config, output / "runs" / name / f"seed{seed}", baseline, **run))
    return tasks


def _shard_of(tasks: list[_Task], shard: tuple[int, int]) -> list[_Task]:
    """The tasks of shard ``(i, n)``: those whose index in (category, seed) order is i mod n. The order does not
    depend on the order of ``--categories`` or ``--seeds``, so shards given the same lists in another order agree."""
    index, count = shard
    ordered = sorted(tasks, key=lambda task: (task.category, task.seed))
    return [task for k, task in enumerate(ordered) if k % count == index]


def _write_plan(output: Path, plan: dict[str, Any]) -> None:
    """Write ``plan.json`` atomically: the shards of one benchmark write the same plan at the same time."""
    output.mkdir(parents=True, exist_ok=True)
    temporary = output / f".{PLAN_JSON}.{platform.node()}.{os.getpid()}"  # one per process, even across machines
    write_atomic(output / PLAN_JSON, (json.dumps(plan, indent=2) + "\n").encode(), temporary=temporary)


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
    every = _tasks(data_root, names, seeds, base, output, baseline, **run)
    mine = _shard_of(every, (index, count))
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
    md, _ = _write_tables(output, plan, results, {"jobs": jobs_note})
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
    every = _tasks(data_root, plan["categories"], plan["seeds"], base, output, baseline, threads=None, progress=False)
    results = {(task.category, task.seed): result for task in every if (result := _stored_result(task)) is not None}
    count = plan["shards"]
    md, missing = _write_tables(output, plan, results, {"tasks": f"collected from {count} shard(s)"})
    if missing:
        absent = set(missing)
        shards = [k for k in range(count) if any((t.category, t.seed) in absent for t in _shard_of(every, (k, count)))]
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


def _write_tables(
    output: Path, plan: dict[str, Any], results: dict[tuple[str, int], dict[str, Any]], notes: dict[str, str]
) -> tuple[Path, list[tuple[str, int]]]:
    """results.csv and results.md of the plan's tasks that have a result; returns results.md and the tasks
    without one."""
    names, seeds = plan["categories"], plan["seeds"]
    methods = [m for m in METHODS if plan["baseline"] or m == "bgad"]
    ordered = [results[(n, s)] for n in names for s in seeds if (n, s) in results]
    missing = [(n, s) for n in names for s in seeds if (n, s) not in results]
    _write_csv(output / "results.csv", ordered, methods)
    settings = {
        "data root": plan["data_root"],
        "preset": plan["preset"],
        "seeds": ", ".join(map(str, seeds)),
        **notes,
    }
    md = output / "results.md"
    md.write_text(_markdown(ordered, names, methods, settings, missing))
    return md, missing


def _write_csv(path: Path, results: list[dict[str, Any]], methods: list[str]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for result in results:
            for method in methods:
                values = result["methods"][method]
                row = [result["category"], result["seed"], method]
                row += [values.get(k, "") for k in (*METRICS, *DECISIONS, *COSTS)]
                writer.writerow(row)


def mean_std(values: list[float], digits: int) -> str:
    """``mean ± std`` (sample std over seeds), or the mean alone for one value."""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


COLUMN_TITLES = {
    "image_auroc": ("image AUROC", 3),
    "pixel_auroc": ("pixel AUROC", 3),
    "pixel_aupro": ("pixel AUPRO", 3),
    "image_ap": ("image AP", 3),
    "pixel_ap": ("pixel AP", 3),
    "train_seconds": ("train s", 1),
    "inference_ms": ("inference ms", 1),
    "peak_rss_mb": ("peak MB", 0),
}


def _method_table(results: list[dict[str, Any]], names: list[str], method: str) -> list[str]:
    keys = list(COLUMN_TITLES)
    paper = "paper image / pixel AUROC"
    lines = [
        "| category | " + " | ".join(title for title, _ in COLUMN_TITLES.values()) + f" | {paper} |",
        "|---|" + "---:|" * len(keys) + "---|",
    ]
    for name in names:
        rows = [r["methods"][method] for r in results if r["category"] == name]
        if not rows:
            continue
        cells = [mean_std([row[k] for row in rows], COLUMN_TITLES[k][1]) for k in keys]
        note = "n/a [^per-category]" if method == "bgad" else "n/a [^baseline]"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {note} |")
    # Mean row: the mean over categories for each seed, then mean ± std of that over seeds.
    seeds = sorted({r["seed"] for r in results})
    per_seed = {
        k: [statistics.fmean(r["methods"][method][k] for r in results if r["seed"] == s) for s in seeds] for k in keys
    }
    cells = [mean_std(per_seed[k], COLUMN_TITLES[k][1]) for k in keys]
    if method == "bgad":
        note = f"{PAPER_MVTEC_MEAN['image_auroc']} / {PAPER_MVTEC_MEAN['pixel_auroc']} [^paper-mean]"
    else:
        note = "n/a [^baseline]"
    counted = len({r["category"] for r in results})
    lines.append(f"| **mean of {counted}** | " + " | ".join(f"**{c}**" for c in cells) + f" | {note} |")
    return lines


def _margin_table(results: list[dict[str, Any]], names: list[str], floors: list[str]) -> str:
    """Per category: bgad's mean minus the best floor's mean (over seeds), for each quality metric."""
    lines = [
        "| category | " + " | ".join(COLUMN_TITLES[k][0] for k in METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for name in names:
        rows = [r["methods"] for r in results if r["category"] == name]
        if not rows:
            continue
        cells = []
        for key in METRICS:
            bgad = statistics.fmean(row["bgad"][key] for row in rows)
            floor = max(statistics.fmean(row[f][key] for row in rows) for f in floors)
            cells.append(f"{bgad - floor:+.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _decision_table(results: list[dict[str, Any]], names: list[str], methods: list[str]) -> list[str]:
    """Per category and method: what the out-of-sample thresholds decide on the evaluation images."""
    lines = [
        "| category | method | good flagged (of all seeds) | good flagged rate | defect recall | image F1 | F1 gap to "
        "best | good images with a mask | mask IoU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        for method in methods:
            rows = [r for r in results if r["category"] == name and "good_flagged" in r["methods"].get(method, {})]
            if not rows:
                continue
            values = [r["methods"][method] for r in rows]
            flagged, n_good = sum(v["good_flagged"] for v in values), sum(v["good_images"] for v in values)
            total = f"{flagged} of {n_good}"
            cells = [mean_std([v[k] for v in values], 3) for k in ("good_flagged_rate", "recall", "image_f1", "f1_gap")]
            masks = sum(v["good_with_masks"] for v in values)
            iou = mean_std([v["mask_iou"] for v in values], 3)
            lines.append(f"| {name} | {method} | {total} | " + " | ".join(cells) + f" | {masks} | {iou} |")
    return lines


def _threads(results: list[dict[str, Any]]) -> str:
    counts = sorted({r["torch_threads"] for r in results})
    return "/".join(map(str, counts)) if counts else "?"


def _markdown(
    results: list[dict[str, Any]],
    names: list[str],
    methods: list[str],
    settings: dict[str, Any],
    missing: list[tuple[str, int]],
) -> str:
    processor = platform.processor() or platform.machine()
    machine = (
        f"{processor}, {usable_cpus()} usable CPUs, torch {torch.__version__} with {_threads(results)} thread(s) "
        f"per task, Python {platform.python_version()}"
    )
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# bgad benchmark",
        "",
        *(f"- {key}: {value}" for key, value in settings.items()),
        f"- categories: {', '.join(names)}",
        f"- written: {now} (bgad {__version__}); machine: {machine}",
        "",
    ]
    if missing:
        lines += [
            f"**Incomplete: {len(missing)} of {len(results) + len(missing)} task(s) have no result** (failed, not run "
            f"yet, or in a shard that has not finished): {', '.join(f'{n} seed {s}' for n, s in missing)}. The "
            "tables and their means cover the finished tasks only.",
            "",
        ]
    if not results:
        return "\n".join([*lines, "No task has finished yet.", ""])
    known = sorted({r["n_known_anomalies"] for r in results})
    lines += [
        f"Each task trains on the category's normal training images plus {'/'.join(map(str, known))} known "
        "anomalies taken from its test set (chosen by the seed); those are left out of the evaluation of both "
        "methods. Cells are mean ± sample std over seeds; the **mean** row is the mean over categories per seed, "
        "then mean ± std over seeds. *train s*: fit time including feature extraction; *inference ms*: one "
        f"image (batch 1, tensor in, map out), median of {INFERENCE_REPEATS} after warm-up; *peak MB*: peak "
        "resident memory of the task's process (ru_maxrss) when the method finished.",
        "",
    ]
    titles = {
        "bgad": "bgad (boundary-guided normalizing flows)",
        "gaussian": "gaussian (per-level, per-position Gaussians on the same backbone, strides 4/8/16; normal "
        "images only)",
        "padim": "padim (PaDiM's recipe on the same backbone: strides 8+16 concatenated, σ = 4 smoothing; normal "
        "images only)",
        "padim_unsmoothed": "padim_unsmoothed (padim without smoothing; normal images only)",
        "padim_unsmoothed_imagenet": "padim_unsmoothed_imagenet (padim_unsmoothed with ImageNet input scaling "
        "instead of the backbone's own; normal images only)",
    }
    for method in methods:
        lines += [f"## {titles[method]}", "", *_method_table(results, names, method), ""]
    lines += [
        "## Decisions at each method's thresholds",
        "",
        "Every method's image threshold targets the same false-alarm rate on out-of-sample scores of its training "
        "normals (`threshold.target_fpr`, cross-fitted: `bgad.method.crossfit`), refined by the same known anomalies "
        "(`bgad.method.thresholds.fit_thresholds`). Counts are summed over seeds, rates are mean ± std.",
        "",
        *_decision_table(results, names, methods),
        "",
    ]
    floors = [m for m in methods if m in BASELINES]
    if floors:
        lines += ["## bgad minus the best floor", "", _margin_table(results, names, floors), ""]
        lines += [
            "Peak memory: in each task the baselines run before BGAD in the same process, so BGAD's peak MB is the "
            "largest of the methods' peaks (BGAD's own whenever it needs more than the baselines).",
            "",
        ]
    if sorted(names) == sorted(MVTEC_CATEGORIES):
        coverage = "This benchmark covers those 15 categories."
    else:
        coverage = "It is comparable only to a mean over those 15 categories, which this benchmark does not cover."
    lines += [
        "[^paper-mean]: The only verified figure: the official code's comment on its MVTec AD training command "
        "(github.com/xcyao00/BGAD, scripts.sh): `seed = 0, img_auc = 0.994, pixel_auc = 0.993`, the mean over the "
        "15 MVTec AD categories with 10 known anomalies, seed 0. Each category's figure is the maximum over "
        "meta-epochs of the AUROC measured on the test set after each one (engines/bgad_fas_train_engine.py "
        "returns `max_score`): model selection on the test set, so optimistic. It uses the reference's own "
        f"backbone, input size and schedule. Every number above is the final model's. {coverage}",
        "[^per-category]: n/a: the paper's per-category figures have not been checked against a source, so none "
        "are shown.",
        "[^baseline]: The baseline is this package's floor, not a published method's configuration (PaDiM uses "
        "ResNet/WideResNet features with random channel subsampling); no paper figure applies.",
        "",
    ]
    return "\n".join(lines)
