"""``bgad fit --from RUN``: add newly labelled defects (and good images) to a trained run in minutes.

RUN's training images (its normals and known anomalies, and what its own lineage added) and the new ones train
RUN's flows on with a short BG-SPP schedule (:meth:`bgad.BGAD.update`). The result is an ordinary run folder
(model, ``run.json`` with the lineage, metrics, report), evaluated on RUN's evaluation images minus any image that
was added for training. RUN is never modified; the output must be a new or empty folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..data.checks import DatasetReport
from ..data.layouts import labelled_defects
from ..data.layouts.files import existing_folder, image_files
from ..errors import BGADError, DatasetError
from .lineage import new_step
from .record import RUN_JSON, LineageStep, RunRecord, read_run
from .runs import RunResults, start_run


def update_run(
    parent: Path,
    output: Path,
    defect_dirs: Sequence[Path] = (),
    mask_dirs: Sequence[Path] = (),
    *,
    normal_dir: Path | None = None,
    meta_epochs: int | None = None,
    normal_fraction: float | None = None,
    eval_size: str | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> RunResults:
    """Train ``parent``'s model on with its training images plus the defects of ``defect_dirs`` (masks in
    ``mask_dirs`` or beside them) and the good images of ``normal_dir`` (searched recursively), for ``meta_epochs``
    (default ``train.update_meta_epochs``) on ``normal_fraction`` (default ``train.update_normal_fraction``) of RUN's
    own normals, on ``device``; write the new run into ``output`` and return its metrics.
    ``eval_size`` defaults to the parent's."""
    if not (parent / RUN_JSON).is_file():
        raise BGADError(f"not a bgad run: {parent / RUN_JSON} is missing (fit --from trains on with its images)")
    if output.resolve().is_relative_to(parent.resolve()):
        raise BGADError(f"output {output} is the run {parent} or inside it (fit --from never changes it): name another")
    if output.is_dir() and any(output.iterdir()):
        raise BGADError(f"output {output} is not empty: fit --from writes a new run into a new or empty folder")
    parent_record = read_run(parent / RUN_JSON)
    added, problems = labelled_defects(defect_dirs, mask_dirs)
    if problems:
        raise DatasetError(problems)
    normals = [] if normal_dir is None else image_files(existing_folder(normal_dir, "normal folder"), recursive=True)
    if normal_dir is not None and not normals:
        raise BGADError(f"no images in normal folder {normal_dir}")
    if not added and not normals:
        raise BGADError("nothing to add: give new defect images (--defect-dir) or good images (--normal-dir)")
    train = parent_record.config.train
    fraction = train.update_normal_fraction if normal_fraction is None else normal_fraction
    step = new_step(parent, added, normals, meta_epochs or train.update_meta_epochs, fraction)
    # The parent's dataset, configuration and known anomalies, and its lineage with this step; the rest of the
    # record comes from the dataset check.
    record = RunRecord(
        parent_record.dataset,
        parent_record.config,
        eval_size=eval_size or parent_record.eval_size,
        drop_duplicates=parent_record.drop_duplicates,
        lineage=(*parent_record.lineage, step),
        known_anomalies=parent_record.known_anomalies,
        known_anomaly_sha1=parent_record.known_anomaly_sha1,
    )
    return start_run(record, output, progress=progress, on_check=lambda report: _check_new(report, step), device=device)


def _check_new(report: DatasetReport, step: LineageStep) -> None:
    """Refuse an added image whose content is already in the training set (one of RUN's, or another new one)."""
    split = report.split
    # run_category puts the step's additions last, in order
    n_train, n_known = len(split.train) - len(step.added_normals), len(split.known) - len(step.added_anomalies)
    first = {report.hashes[s.path]: s.path for s in reversed(split.train[:n_train] + split.known[:n_known])}
    problems = []
    for sample in split.train[n_train:] + split.known[n_known:]:
        digest = report.hashes[sample.path]
        if digest in first:
            problems.append(f"{sample.path} is already in the training set (same content as {first[digest]})")
        first.setdefault(digest, sample.path)
    if problems:
        raise DatasetError(problems)
