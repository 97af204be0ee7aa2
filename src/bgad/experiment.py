"""Run folders: check, train, save and evaluate one dataset, resume an interrupted fit, re-evaluate a saved run.

A run folder holds the model files (:mod:`bgad.runs`), ``run.json`` (the dataset, the configuration and the
known anomalies used for training), the training log, the metrics and the HTML report. While training, all of it
is written into ``.<name>.partial`` beside the run folder, which becomes the run folder only at the end; a fit
stopped by Ctrl-C keeps it, with a checkpoint of every finished meta-epoch, for ``bgad fit --resume``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from ._version import __version__
from .checkpoint import STATE_JSON
from .config import BGADConfig
from .data import Category, content_hash, evaluation_samples
from .datasets import load_dataset
from .detector import BGAD
from .errors import BGADError, TrainingInterrupted
from .evaluation import EVAL_SIZES, Evaluation, evaluate, full_resolution_metrics
from .locking import run_lock
from .report import write_report
from .runs import MODEL_JSON
from .validation import DatasetReport, check_dataset, drop_evaluation_duplicates

RUN_JSON = "run.json"
METRICS_JSON = "metrics.json"
TRAIN_LOG = "train_log.jsonl"
KNOWN_ANOMALIES = "known_anomalies.txt"
CHECKPOINT = "checkpoint"


def partial_folder(output: Path) -> Path:
    """Where a fit into ``output`` works until it is complete."""
    return output.parent / f".{output.name}.partial"


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _write_report(
    evaluation: Evaluation, results: dict[str, Any], directory: Path, detector: BGAD, category: str
) -> None:
    """Write the HTML report; a failure to draw it is a warning, never the end of a fit or a test."""
    title = f"bgad evaluation: {category}"
    scalars = {key: value for key, value in results.items() if not isinstance(value, dict)}
    try:
        write_report(evaluation, scalars, directory, title=title, image_threshold=detector.thresholds_.image)
    except Exception as err:
        print(f"bgad: warning: the report could not be written: {err!r}", file=sys.stderr)


def is_run_folder(path: Path) -> bool:
    """True for a folder that a finished fit wrote: the only kind of folder ``--overwrite`` may replace."""
    return (path / RUN_JSON).is_file() and (path / MODEL_JSON).is_file()


def _check_output(output: Path, *, overwrite: bool) -> None:
    """Raise unless a new fit may write ``output``: a new or empty folder, or (with ``overwrite``) a bgad run.

    The current folder, one of its parents, the home folder and the file-system root are never outputs: the
    finished run is renamed into place, and ``--overwrite`` would have replaced them.
    """
    target = output.resolve()
    here = Path.cwd().resolve()
    if target == here or target in here.parents or target == Path.home().resolve():
        raise BGADError(f"output {output} is the current folder, a parent of it or the home folder: name a new folder")
    if output.exists() and not output.is_dir():
        raise BGADError(f"output {output} is a file, not a run folder")
    if output.is_dir() and any(output.iterdir()):
        if not is_run_folder(output):
            raise BGADError(
                f"output {output} is not empty and is not a bgad run (no {RUN_JSON} and {MODEL_JSON}): "
                "name a new folder (--overwrite only replaces run folders)"
            )
        if not overwrite:
            raise BGADError(f"output {output} already holds a run (use --overwrite to replace it)")
    if partial_folder(output).exists() and not overwrite:
        raise BGADError(f"an interrupted fit of {output} exists: continue it with `bgad fit --resume {output}`")


def _check_data_outside(output: Path, category: Category) -> None:
    """Raise if the run folder would hold any of the dataset's files (replacing it would delete them)."""
    target = output.resolve()
    for sample in (*category.train, *category.test, *category.known):
        for path in (sample.path, sample.mask_path):
            if path is not None and path.resolve().is_relative_to(target):
                raise BGADError(f"output {output} contains the dataset's file {path}: put the run somewhere else")


def _install(partial: Path, output: Path) -> None:
    """Rename the finished ``partial`` folder to ``output``; an existing run there is renamed aside first and
    deleted only once the new one is in place, so that a failure never leaves neither."""
    aside = output.parent / f".{output.name}.replaced"
    if aside.exists():
        shutil.rmtree(aside)  # left by an install that was killed after its swap
    if output.exists():
        if any(output.iterdir()) and not is_run_folder(output):
            raise BGADError(f"output {output} was filled with other files during the fit: the run is kept in {partial}")
        output.rename(aside)
    try:
        partial.rename(output)
    except BaseException:
        if aside.exists():
            aside.rename(output)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def fit_run(
    dataset: dict[str, Any],
    output: Path,
    config: BGADConfig,
    *,
    overwrite: bool = False,
    eval_size: str = "input",
    drop_duplicates: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Check the output and the dataset, then train, save and evaluate into ``output``; return the metrics.

    ``dataset`` is a :func:`bgad.datasets.load_dataset` spec. ``overwrite`` replaces an earlier run in ``output``
    (never any other folder). Nothing is left behind if the fit fails before its first checkpoint; after it, the
    partial folder stays for :func:`resume_run` (Ctrl-C, or an error in evaluation: the trained model is kept).
    """
    _check_eval_size(eval_size)
    _make_parent(output)
    with run_lock(output):
        _check_output(output, overwrite=overwrite)
        category = load_dataset(dataset)
        _check_data_outside(output, category)
        report = _checked(category, config, drop_duplicates=drop_duplicates, progress=progress)
        category = report.category
        partial = partial_folder(output)
        shutil.rmtree(partial, ignore_errors=True)
        run = {
            "bgad_version": __version__,
            "dataset": dataset,
            "category": category.name,
            "config": config.to_dict(),
            "known_anomalies": [category.relative(s.path) for s in report.known],
            "known_types": sorted({s.defect_type for s in report.known}),
            # `bgad test` leaves these out by content, even on a copy of the data or another path to it.
            "known_anomaly_sha1": [report.hashes[s.path] for s in report.known],
            "drop_duplicates": drop_duplicates,
            "training_fingerprint": report.training_fingerprint(),
            "eval_size": eval_size,
        }
        try:
            partial.mkdir()
            _write_json(partial / RUN_JSON, run)
            names = "".join(f"{name}\n" for name in run["known_anomalies"])
            (partial / KNOWN_ANOMALIES).write_text(names, encoding="utf-8", errors="surrogateescape")
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)  # nothing trained yet: leave nothing behind
            raise
        return _train_and_evaluate(partial, output, run, category, progress=progress)


def _checked(category: Category, config: BGADConfig, *, drop_duplicates: bool, progress: bool) -> DatasetReport:
    """The dataset check of a fit (or a resume); any problem stops it."""
    report = check_dataset(
        category,
        num_anomalies=config.train.num_anomalies,
        sampling=config.train.anomaly_sampling,
        seed=config.train.seed,
        drop_duplicates=drop_duplicates,
        progress=progress,
    )
    report.raise_for_problems()
    for note in report.notes:
        print(f"bgad: note: {note}", file=sys.stderr)
    return report


def _make_parent(output: Path) -> None:
    """Create the folder the run goes into, before any long work, so that a bad output fails in one line first."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BGADError(f"cannot create {output.parent} for the output: {err.strerror or err}") from None


def resume_run(output: Path, *, progress: bool = True) -> dict[str, Any]:
    """Finish the interrupted fit of ``output``: train on from its last checkpoint with its own dataset and
    options, or, if training had finished, go straight to evaluation with the saved model."""
    partial = partial_folder(output)
    if not (partial / RUN_JSON).is_file():
        raise BGADError(f"no interrupted fit of {output} to resume ({partial / RUN_JSON} is missing)")
    with run_lock(output):
        run = read_run_json(partial / RUN_JSON)
        category = load_dataset(run["dataset"])
        _check_data_outside(output, category)
        config = BGADConfig.from_dict(run["config"])
        report = _checked(category, config, drop_duplicates=run.get("drop_duplicates") is True, progress=progress)
        if run.get("training_fingerprint", report.training_fingerprint()) != report.training_fingerprint():
            raise BGADError(
                f"the training images changed since the interrupted fit of {output} (added, removed or edited): "
                "resuming would mix two datasets; start a new fit"
            )
        return _train_and_evaluate(partial, output, run, report.category, progress=progress)


def read_run_json(path: Path) -> dict[str, Any]:
    """The description of a run (``run.json``), checked for the fields bgad reads; a damaged one is a BGADError."""
    try:
        run = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BGADError(f"cannot read {path}: {err}") from None
    if not isinstance(run, dict):
        raise BGADError(f"{path} is damaged: not a JSON object")
    if "dataset" not in run:
        raise BGADError(f"{path} was written by an older bgad that did not record its dataset; fit it again")
    expected = {"dataset": dict, "config": dict, "known_anomalies": list, "known_types": list}
    for key, kind in expected.items():
        if not isinstance(run.get(key), kind):
            raise BGADError(f"{path} is damaged: {key!r} is missing or not a {kind.__name__}")
    names = run["known_anomalies"] + run["known_types"] + run.get("known_anomaly_sha1", [])
    if not isinstance(run.get("known_anomaly_sha1", []), list) or not all(isinstance(name, str) for name in names):
        raise BGADError(f"{path} is damaged: the known anomalies are not a list of names")
    return run


def _train_and_evaluate(
    partial: Path, output: Path, run: dict[str, Any], category: Category, *, progress: bool
) -> dict[str, Any]:
    config = BGADConfig.from_dict(run["config"])
    by_name = {category.relative(s.path): s for s in category.test + category.known}
    missing = [name for name in run["known_anomalies"] if name not in by_name]
    if missing:
        raise BGADError(f"known anomaly {missing[0]} is no longer in the dataset")
    known = tuple(by_name[name] for name in run["known_anomalies"])
    detector = _saved_detector(partial) or _train(partial, output, config, category, known, progress=progress)
    try:
        evaluation = evaluate(detector, evaluation_samples(category, known), progress=progress)
        results = evaluation.metrics()
        seconds = detector.train_seconds_
        results.update(n_known_anomalies=len(known), train_seconds=None if seconds is None else round(seconds, 1))
        results["per_type"] = evaluation.per_type_metrics(set(run["known_types"]))
        if run.get("eval_size") == "full":
            results["full_resolution"] = full_resolution_metrics(evaluation)
        _write_json(partial / METRICS_JSON, results)
        _write_report(evaluation, results, partial, detector, category.name)
        _install(partial, output)
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            f"interrupted after training; the model is saved: finish with `bgad fit --resume {output}`"
        ) from None
    except (BGADError, OSError) as err:
        raise BGADError(
            f"{err}; the trained model is kept in {partial}: finish with `bgad fit --resume {output}`"
        ) from None
    shutil.rmtree(output / CHECKPOINT, ignore_errors=True)
    return results


def _saved_detector(partial: Path) -> BGAD | None:
    """The model a fit saved in ``partial`` when its training had finished, else None (train, or resume)."""
    if not (partial / MODEL_JSON).is_file():
        return None
    try:
        return BGAD.load(partial)
    except BGADError:
        return None  # saving was interrupted: the checkpoint retrains nothing, only recalibrates


def _train(
    partial: Path, output: Path, config: BGADConfig, category: Category, known: tuple, *, progress: bool
) -> BGAD:
    """Train (or resume) into ``partial`` and save the model there; the folder is removed on failure unless a
    checkpoint makes it worth resuming."""
    try:
        detector = BGAD(config).fit(
            [s.path for s in category.train],
            [s.path for s in known],
            [s.mask_path for s in known],
            log_path=partial / TRAIN_LOG,
            checkpoint=partial / CHECKPOINT,
            progress=progress,
        )
        detector.save(partial)
    except KeyboardInterrupt:
        if not (partial / CHECKPOINT / STATE_JSON).exists():
            shutil.rmtree(partial, ignore_errors=True)
            raise
        raise TrainingInterrupted(
            f"interrupted; finished meta-epochs are saved: continue with `bgad fit --resume {output}`"
        ) from None
    except BaseException as err:
        if not (partial / CHECKPOINT / STATE_JSON).exists():
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if isinstance(err, (BGADError, OSError)):  # a full disk, say: finished meta-epochs are kept for --resume
            raise BGADError(
                f"{err}; finished meta-epochs are saved: continue with `bgad fit --resume {output}`"
            ) from None
        raise
    return detector


def evaluate_run(
    run: Path, dataset: dict[str, Any] | None = None, *, eval_size: str = "input", progress: bool = True
) -> dict[str, Any]:
    """Re-evaluate a saved run on its dataset (or another), leaving out the known anomalies it trained on; with
    ``eval_size="full"`` also at each image's own resolution (``results["full_resolution"]``)."""
    _check_eval_size(eval_size)
    run_json = run / RUN_JSON
    if not run_json.is_file():
        raise BGADError(f"not a bgad run: {run_json} is missing")
    info = read_run_json(run_json)
    detector = BGAD.load(run)
    category = load_dataset(dataset or info["dataset"])
    if info.get("drop_duplicates") is True:
        category, dropped = drop_evaluation_duplicates(category)
        if dropped:
            print(
                f"bgad: note: {dropped} evaluation image(s) identical to a training image were dropped", file=sys.stderr
            )
    used_names = set(info["known_anomalies"]) if dataset in (None, info["dataset"]) else set()
    used_content = set(info.get("known_anomaly_sha1", ()))
    samples = [
        s
        for s in category.test
        if category.relative(s.path) not in used_names
        and not (s.is_anomalous and used_content and content_hash(s.path) in used_content)
    ]
    evaluation = evaluate(detector, samples, progress=progress)
    results = evaluation.metrics()
    results["n_known_anomalies"] = len(info["known_anomalies"])
    if left_out := len(category.test) - len(samples):
        print(
            f"bgad: {left_out} training anomalies found in this data were left out of the evaluation", file=sys.stderr
        )
    results["per_type"] = evaluation.per_type_metrics(set(info["known_types"]))
    if eval_size == "full":
        results["full_resolution"] = full_resolution_metrics(evaluation)
    _write_report(evaluation, results, run, detector, category.name)
    return results


def _check_eval_size(eval_size: str) -> None:
    if eval_size not in EVAL_SIZES:
        raise BGADError(f"unknown evaluation size {eval_size!r}; use one of {', '.join(EVAL_SIZES)}")
