"""Run folders: check, train, save and evaluate one dataset, resume an interrupted fit, re-evaluate a saved run.

A run folder holds the model files (:mod:`bgad.storage.model_files`), ``run.json`` (:mod:`bgad.app.record`: the dataset,
the configuration and the known anomalies used for training), the training log, the metrics and the HTML report.
While training, all of it is written into ``.<name>.partial`` beside the run folder, which becomes the run folder
only at the end; a fit stopped by Ctrl-C keeps it, with a checkpoint of every finished meta-epoch, for
``bgad fit --resume``.

Under ``torchrun`` a fit or a resume is data-parallel (:mod:`bgad.runtime.distributed`): process 0 does all of the above
and tells the other processes what to train on; they only train with it, and write nothing.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import BGADConfig
from ..data.checks import DatasetReport, check_dataset, drop_evaluation_duplicates
from ..data.layouts import DatasetSpec
from ..data.samples import Category, Split
from ..detector import BGAD
from ..errors import BGADError, TrainingInterrupted
from ..evaluation import EVAL_SIZES, Evaluation, Metrics, evaluate, full_resolution_metrics
from ..method.thresholds import operating_point
from ..runtime.devices import resolve_device
from ..runtime.distributed import DataParallel, current
from ..selection import Selection, describe_selection, select_settings
from ..storage.checkpoint import STATE_JSON
from ..storage.model_files import MODEL_JSON
from ..storage.serialization import write_json
from .lineage import evaluation_samples, report_notes, run_category, trainer
from .locking import run_lock
from .record import RUN_JSON, RunRecord, read_run, write_run
from .report import FILES as REPORT_FILES
from .report import REPORT_HTML, write_report

METRICS_JSON = "metrics.json"
TRAIN_LOG = "train_log.jsonl"
KNOWN_ANOMALIES = "known_anomalies.txt"
CHECKPOINT = "checkpoint"


def partial_folder(output: Path) -> Path:
    """Where a fit into ``output`` works until it is complete."""
    return output.parent / f".{output.name}.partial"


@dataclass(frozen=True)
class RunResults:
    """What a fit or a re-evaluation measured; :meth:`to_dict` is ``metrics.json`` and what the CLI prints."""

    metrics: Metrics
    n_known_anomalies: int
    per_type: dict[str, dict[str, float | bool]]  # see Evaluation.per_type_metrics
    train_seconds: float | None = None  # None for a re-evaluation, or a fit resumed after its training
    full_resolution: dict[str, float] | None = None  # pixel metrics at each image's resolution (eval size "full")
    decisions: dict[str, Any] | None = None  # what the model's thresholds decide (Evaluation.decisions)
    operating_point: dict[str, Any] | None = None  # what they were expected to decide (thresholds.operating_point)

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON values; those that are None are left out."""
        out = {
            **self.metrics.as_dict(),
            "n_known_anomalies": self.n_known_anomalies,
            "train_seconds": self.train_seconds,
        }
        out |= {"per_type": self.per_type, "full_resolution": self.full_resolution, "at_thresholds": self.decisions}
        out["operating_point"] = self.operating_point
        return {key: value for key, value in out.items() if value is not None}


def _results(
    evaluation: Evaluation,
    detector: BGAD,
    n_known: int,
    known_types: list[str],
    eval_size: str,
    train_seconds: float | None = None,
) -> RunResults:
    full = full_resolution_metrics(evaluation) if eval_size == "full" else None
    per_type = evaluation.per_type_metrics(set(known_types))
    decisions = evaluation.decisions(detector.thresholds_)
    expected = None
    if detector.normal_scores_ is not None:
        expected = operating_point(detector.thresholds_.image, detector.normal_scores_, detector.known_scores_)
    return RunResults(evaluation.metrics(), n_known, per_type, train_seconds, full, decisions, expected)


def _write_report(
    evaluation: Evaluation,
    results: RunResults,
    directory: Path,
    detector: BGAD,
    category: str,
    notes: list[str],
) -> None:
    """Write the HTML report; a failure to draw it is a warning, never the end of a fit or a test."""
    title = f"bgad evaluation: {category}"
    scalars = {key: value for key, value in results.to_dict().items() if not isinstance(value, dict)}
    try:
        write_report(
            evaluation,
            scalars,
            directory,
            title=title,
            thresholds=detector.thresholds_,
            decisions=results.decisions,
            operating_point=results.operating_point,
            notes=notes,
        )
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
    _refuse_link(output)
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


def _refuse_link(output: Path) -> None:
    """A run is installed by renaming folders, which would replace a symbolic link itself (not the run it points
    to) and leave a link where a folder is expected: a link is refused before any work."""
    if output.is_symlink():
        raise BGADError(
            f"output {output} is a symbolic link (to {os.readlink(output)}): give the folder itself; bgad never "
            "replaces a link"
        )


def _remove(path: Path) -> None:
    """Delete a folder, or a symbolic link left where one was expected (by an older bgad), never what it points to."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _check_data_outside(output: Path, category: Category) -> None:
    """Raise if the run folder would hold any of the dataset's files (replacing it would delete them)."""
    target = output.resolve()
    for sample in (*category.train, *category.test, *category.known):
        for path in (sample.path, sample.mask_path):
            if path is not None and path.resolve().is_relative_to(target):
                raise BGADError(f"output {output} contains the dataset's file {path}: put the run somewhere else")


def install_run(partial: Path, output: Path) -> None:
    """Rename the finished ``partial`` folder to ``output``; an existing run there is renamed aside first and
    deleted only once the new one is in place, so that a failure never leaves neither."""
    aside = output.parent / f".{output.name}.replaced"
    if aside.exists() or aside.is_symlink():
        _remove(aside)  # left by an install that was killed after its swap
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
    _remove(aside)


def fit_run(
    dataset: DatasetSpec,
    output: Path,
    config: BGADConfig,
    *,
    overwrite: bool = False,
    eval_size: str = "input",
    drop_duplicates: bool = False,
    progress: bool = True,
    on_split: Callable[[Split], None] | None = None,
    device: str = "cpu",
    select_folds: int | None = None,
) -> RunResults | None:
    """Check the output and the dataset, then train on ``device``, save and evaluate into ``output``; return what
    it measured (None on the processes other than 0 of a data-parallel fit, which only train).

    ``select_folds``: first choose the levels and score temperature by cross-validation over the known anomalies
    (:func:`bgad.selection.select_settings`); the chosen config and every candidate's estimate go to ``run.json``.

    ``overwrite`` replaces an earlier run in ``output`` (never any other folder). ``on_split`` is called with the
    checked dataset's split before training (the benchmark fits its floors there, on the same images). Nothing is
    left behind if the fit fails before its first checkpoint; after it, the partial folder stays for
    :func:`resume_run` (Ctrl-C, or an error in evaluation: the trained model is kept).
    """
    record = RunRecord(dataset, config, eval_size=eval_size, drop_duplicates=drop_duplicates)
    on_check = None if on_split is None else lambda report: on_split(report.split)
    return start_run(
        record,
        output,
        overwrite=overwrite,
        progress=progress,
        on_check=on_check,
        device=device,
        select_folds=select_folds,
    )


def start_run(
    record: RunRecord,
    output: Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    on_check: Callable[[DatasetReport], None] | None = None,
    device: str = "cpu",
    select_folds: int | None = None,
) -> RunResults | None:
    """The body of :func:`fit_run` and of ``bgad fit --from`` (:func:`bgad.app.update.update_run`): ``record``
    gives the dataset, the configuration, ``drop_duplicates``, ``eval_size`` and, for a run trained on from
    another, its lineage (:mod:`bgad.app.lineage`); the rest of ``run.json`` (the known anomalies, the fingerprint)
    comes from the dataset check, after which ``on_check`` may still refuse the fit."""
    resolve_device(device)  # a missing GPU fails now, not after the dataset check
    parallel = current()
    if parallel is not None and not parallel.is_main:
        return _follow(parallel, device)
    _check_eval_size(record.eval_size)
    _make_parent(output)
    with run_lock(output):
        _check_output(output, overwrite=overwrite)
        category, removed = run_category(record)
        _check_data_outside(output, category)
        report = _checked(category, record.config, drop_duplicates=record.drop_duplicates, progress=progress)
        split = report.split
        if on_check is not None:
            on_check(report)
        if select_folds is not None:
            selection = _select(split, record.config, select_folds, progress=progress, device=device)
            record = replace(record, config=selection.config, selection=selection.to_dict())
        record = replace(
            record,
            category=category.name,
            known_anomalies=tuple(split.known_names),
            known_types=tuple(split.known_types),
            known_anomaly_sha1=tuple(report.hashes[s.path] for s in split.known),
            training_fingerprint=report.training_fingerprint(),
            evaluation_removed=removed,
        )
        partial = partial_folder(output)
        shutil.rmtree(partial, ignore_errors=True)
        try:
            partial.mkdir()
            write_run(partial / RUN_JSON, record)
            names = "".join(f"{name}\n" for name in record.known_anomalies)
            (partial / KNOWN_ANOMALIES).write_text(names, encoding="utf-8", errors="surrogateescape")
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)  # nothing trained yet: leave nothing behind
            raise
        return _train_and_evaluate(partial, output, record, split, progress=progress, device=device)


def _select(split: Split, config: BGADConfig, folds: int, *, progress: bool, device: str) -> Selection:
    """Cross-validated choice of levels and temperature on the split's training images and known anomalies."""
    selection = select_settings(
        [s.path for s in split.train],
        [s.path for s in split.known],
        [s.mask_path for s in split.known],
        config,
        folds=folds,
        groups=[s.defect_type for s in split.known],
        device=device,
        progress=progress,
    )
    chosen = next(e for e in selection.estimates if e.candidate == selection.chosen)
    print(
        f"bgad: selected {selection.chosen.describe()} by {selection.folds}-fold cross-validation over the known "
        f"anomalies (mean of image AUROC, pixel AUROC and AUPRO {chosen.criterion:.3f}) in {selection.seconds:.0f} s",
        file=sys.stderr,
    )
    return selection


def _checked(category: Category, config: BGADConfig, *, drop_duplicates: bool, progress: bool) -> DatasetReport:
    """The dataset check of a fit (or a resume), which makes its split; any problem stops it."""
    report = check_dataset(category, config.train, drop_duplicates=drop_duplicates, progress=progress)
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


def resume_run(output: Path, *, progress: bool = True, device: str = "cpu") -> RunResults | None:
    """Finish the interrupted fit of ``output``: train on from its last checkpoint with its own dataset and
    options, on ``device`` (any: the checkpoint is device-independent), or, if training had finished, go straight
    to evaluation with the saved model. None on the processes other than 0 of a data-parallel resume."""
    resolve_device(device)
    parallel = current()
    if parallel is not None and not parallel.is_main:
        return _follow(parallel, device)
    partial = partial_folder(output)
    if not (partial / RUN_JSON).is_file():
        raise BGADError(f"no interrupted fit of {output} to resume ({partial / RUN_JSON} is missing)")
    _refuse_link(output)
    with run_lock(output):
        record = read_run(partial / RUN_JSON)
        category, _ = run_category(record)
        _check_data_outside(output, category)
        report = _checked(category, record.config, drop_duplicates=record.drop_duplicates, progress=progress)
        # The fingerprint covers the known anomalies: unchanged, the split is the interrupted fit's own.
        if (record.training_fingerprint or report.training_fingerprint()) != report.training_fingerprint():
            raise BGADError(
                f"the training images changed since the interrupted fit of {output} (added, removed or edited): "
                "resuming would mix two datasets; start a new fit"
            )
        if tuple(report.split.known_names) != record.known_anomalies:
            raise BGADError(f"the known anomalies of the interrupted fit of {output} are no longer in the dataset")
        return _train_and_evaluate(partial, output, record, report.split, progress=progress, device=device)


def _train_and_evaluate(
    partial: Path, output: Path, record: RunRecord, split: Split, *, progress: bool, device: str
) -> RunResults:
    detector = _saved_detector(partial)
    images = ([s.path for s in split.train], [s.path for s in split.known], [s.mask_path for s in split.known])
    if (parallel := current()) is not None:  # what the other processes train on (nothing: training had finished)
        if record.lineage:
            raise BGADError("fit --from does not run under torchrun: run it as one process")
        parallel.broadcast(None if detector is not None else (record.config, images))
    if detector is not None:
        detector.to(device)
    else:
        detector = _train(partial, output, trainer(record, device), images, progress=progress)
    try:
        evaluation = evaluate(detector, split.evaluation, progress=progress)
        seconds = detector.train_seconds_
        seconds = None if seconds is None else round(seconds, 1)
        results = _results(evaluation, detector, len(split.known), split.known_types, record.eval_size, seconds)
        write_json(partial / METRICS_JSON, results.to_dict())
        notes = report_notes(record, record.evaluation_removed)
        if record.selection is not None:
            notes.append(describe_selection(record.selection))
        _write_report(evaluation, results, partial, detector, split.category.name, notes)
        install_run(partial, output)
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


def _follow(parallel: DataParallel, device: str) -> None:
    """A data-parallel fit on a process other than 0: train with the data and configuration process 0 sends
    (nothing if its training had finished), writing nothing."""
    job = parallel.broadcast(None)
    if job is not None:
        config, images = job
        BGAD(config, device=device).fit(*images, progress=False)


def _train(
    partial: Path,
    output: Path,
    train: Callable[..., BGAD],
    images: tuple[list[Path], list[Path], list[Path]],
    *,
    progress: bool,
) -> BGAD:
    """Train (or resume) with ``train`` (a fit, or an update of the parent: :func:`bgad.app.lineage.trainer`) on
    ``images`` (normals, known anomalies, their masks) into ``partial`` and save the model there; the folder is
    removed on failure unless a checkpoint makes it worth resuming."""
    try:
        detector = train(
            *images,
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
    run: Path,
    dataset: DatasetSpec | None = None,
    *,
    output: Path | None = None,
    eval_size: str = "input",
    progress: bool = True,
    device: str = "cpu",
) -> RunResults:
    """Re-evaluate a saved run on ``device`` on its dataset (or another), leaving out the known anomalies it trained
    on; with ``eval_size="full"`` also at each image's own resolution (``full_resolution``). With ``output``, the
    metrics and the report are written there (a new or empty folder, or an earlier test's); the run is only read."""
    _check_eval_size(eval_size)
    if output is not None:
        _check_test_output(output, run)
    run_json = run / RUN_JSON
    if not run_json.is_file():
        raise BGADError(f"not a bgad run: {run_json} is missing")
    record = read_run(run_json)
    detector = BGAD.load(run).to(device)
    stored = record.dataset
    category = (dataset or stored).load()
    if record.drop_duplicates:
        category, dropped = drop_evaluation_duplicates(category)
        if dropped:
            print(
                f"bgad: note: {dropped} evaluation image(s) identical to a training image were dropped", file=sys.stderr
            )
    samples, removed = evaluation_samples(category, record, same_dataset=dataset in (None, stored))
    evaluation = evaluate(detector, samples, progress=progress)
    results = _results(evaluation, detector, len(record.known_anomalies), list(record.known_types), eval_size)
    if (left_out := len(category.test) - len(samples)) and dataset not in (None, stored):
        print(
            f"bgad: {left_out} training anomalies found in this data were left out of the evaluation", file=sys.stderr
        )
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        write_json(output / METRICS_JSON, results.to_dict())
        _write_report(evaluation, results, output, detector, category.name, report_notes(record, removed))
    return results


def _check_test_output(output: Path, run: Path) -> None:
    """A test writes into a new or empty folder, or over an earlier test's; never into a run (whose metrics and
    report would then disagree with its fit) nor over other files."""
    if output.resolve() == run.resolve() or is_run_folder(output):
        raise BGADError(f"output {output} is a run folder: a test writes its metrics and report elsewhere")
    if output.exists() and not output.is_dir():
        raise BGADError(f"output {output} is a file, not a folder")
    if output.is_dir() and any(output.iterdir()):
        earlier = {METRICS_JSON, REPORT_HTML, REPORT_FILES}
        if not {p.name for p in output.iterdir()} <= earlier:
            raise BGADError(f"output {output} is not empty: name a new folder (it may only hold an earlier test)")


def _check_eval_size(eval_size: str) -> None:
    if eval_size not in EVAL_SIZES:
        raise BGADError(f"unknown evaluation size {eval_size!r}; use one of {', '.join(EVAL_SIZES)}")
