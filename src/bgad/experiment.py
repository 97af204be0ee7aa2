"""Run folders: check, train, save and evaluate one dataset, resume an interrupted fit, re-evaluate a saved run.

A run folder holds the model files (:mod:`bgad.runs`), ``run.json`` (the dataset, the configuration and the
known anomalies used for training), the training log, the metrics and the HTML report. While training, all of it
is written into ``.<name>.partial`` beside the run folder, which becomes the run folder only at the end; a fit
stopped by Ctrl-C keeps it, with a checkpoint of every finished meta-epoch, for ``bgad fit --resume``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from . import __version__
from .checkpoint import STATE_JSON
from .config import BGADConfig
from .data import Category, evaluation_samples
from .datasets import load_dataset
from .detector import BGAD
from .errors import BGADError
from .evaluation import Evaluation, evaluate
from .report import write_report
from .validation import check_dataset

RUN_JSON = "run.json"
METRICS_JSON = "metrics.json"
TRAIN_LOG = "train_log.jsonl"
KNOWN_ANOMALIES = "known_anomalies.txt"
CHECKPOINT = "checkpoint"


class TrainingInterrupted(Exception):
    """Ctrl-C stopped a fit during training: its partial folder can be resumed from the last checkpoint."""


def partial_folder(output: Path) -> Path:
    """Where a fit into ``output`` works until it is complete."""
    return output.parent / f".{output.name}.partial"


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _write_report(
    evaluation: Evaluation, results: dict[str, Any], directory: Path, detector: BGAD, category: str
) -> None:
    title = f"bgad evaluation: {category}"
    scalars = {key: value for key, value in results.items() if not isinstance(value, dict)}
    write_report(evaluation, scalars, directory, title=title, image_threshold=detector.thresholds_.image)


def _check_output(output: Path, *, overwrite: bool) -> None:
    """Raise unless a new fit may write ``output``."""
    if output.exists() and not overwrite and (not output.is_dir() or any(output.iterdir())):
        raise BGADError(f"output {output} already exists and is not empty (use --overwrite to replace it)")
    if partial_folder(output).exists() and not overwrite:
        raise BGADError(f"an interrupted fit of {output} exists: continue it with `bgad fit --resume {output}`")


def fit_run(
    dataset: dict[str, Any], output: Path, config: BGADConfig, *, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Check the dataset, then train, save and evaluate into ``output``; return the metrics.

    ``dataset`` is a :func:`bgad.datasets.load_dataset` spec. Nothing is left behind on an error; on Ctrl-C
    during training the partial folder stays for :func:`resume_run`.
    """
    _check_output(output, overwrite=overwrite)
    category = load_dataset(dataset)
    report = check_dataset(
        category,
        num_anomalies=config.train.num_anomalies,
        sampling=config.train.anomaly_sampling,
        seed=config.train.seed,
        progress=progress,
    )
    report.raise_for_problems()
    partial = partial_folder(output)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    run = {
        "bgad_version": __version__,
        "dataset": dataset,
        "category": category.name,
        "config": config.to_dict(),
        "known_anomalies": [category.relative(s.path) for s in report.known],
        "known_types": sorted({s.defect_type for s in report.known}),
    }
    _write_json(partial / RUN_JSON, run)
    return _train_and_evaluate(partial, output, run, category, progress=progress)


def resume_run(output: Path, *, progress: bool = True) -> dict[str, Any]:
    """Continue the interrupted fit of ``output`` from its last checkpoint, with its own dataset and options."""
    partial = partial_folder(output)
    if not (partial / RUN_JSON).is_file():
        raise BGADError(f"no interrupted fit of {output} to resume ({partial / RUN_JSON} is missing)")
    run = json.loads((partial / RUN_JSON).read_text())
    return _train_and_evaluate(partial, output, run, load_dataset(run["dataset"]), progress=progress)


def _train_and_evaluate(
    partial: Path, output: Path, run: dict[str, Any], category: Category, *, progress: bool
) -> dict[str, Any]:
    config = BGADConfig.from_dict(run["config"])
    by_name = {category.relative(s.path): s for s in category.test + category.known}
    missing = [name for name in run["known_anomalies"] if name not in by_name]
    if missing:
        raise BGADError(f"known anomaly {missing[0]} is no longer in the dataset")
    known = tuple(by_name[name] for name in run["known_anomalies"])
    (partial / KNOWN_ANOMALIES).write_text("".join(f"{name}\n" for name in run["known_anomalies"]))
    try:
        detector = BGAD(config).fit(
            [s.path for s in category.train],
            [s.path for s in known],
            [s.mask_path for s in known],
            log_path=partial / TRAIN_LOG,
            checkpoint=partial / CHECKPOINT,
            progress=progress,
        )
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            f"interrupted; finished meta-epochs are saved: continue with `bgad fit --resume {output}`"
        ) from None
    except BaseException:
        if not (partial / CHECKPOINT / STATE_JSON).exists():  # keep finished meta-epochs for --resume
            shutil.rmtree(partial, ignore_errors=True)
        raise
    try:
        detector.save(partial)
        evaluation = evaluate(detector, evaluation_samples(category, known), progress=progress)
        results = evaluation.metrics()
        results.update(n_known_anomalies=len(known), train_seconds=round(detector.train_seconds_, 1))
        results["per_type"] = evaluation.per_type_metrics(set(run["known_types"]))
        _write_json(partial / METRICS_JSON, results)
        _write_report(evaluation, results, partial, detector, category.name)
        shutil.rmtree(partial / CHECKPOINT, ignore_errors=True)
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        partial.rename(output)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return results


def evaluate_run(run: Path, dataset: dict[str, Any] | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Re-evaluate a saved run on its dataset (or another), leaving out the known anomalies it trained on."""
    run_json = run / RUN_JSON
    if not run_json.is_file():
        raise BGADError(f"not a bgad run: {run_json} is missing")
    info = json.loads(run_json.read_text())
    if "dataset" not in info:
        raise BGADError(f"{run_json} was written by an older bgad that did not record its dataset; fit it again")
    detector = BGAD.load(run)
    category = load_dataset(dataset or info["dataset"])
    used = set(info["known_anomalies"]) if dataset in (None, info["dataset"]) else set()
    samples = [s for s in category.test if category.relative(s.path) not in used]
    evaluation = evaluate(detector, samples, progress=progress)
    results = evaluation.metrics()
    results["n_known_anomalies"] = len(info["known_anomalies"])
    results["per_type"] = evaluation.per_type_metrics(set(info["known_types"]))
    _write_report(evaluation, results, run, detector, category.name)
    return results
