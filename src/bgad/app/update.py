"""``bgad update``: add newly labelled defects (and good images) to a trained run in minutes.

The run's own training images (its normals and known anomalies, from its ``run.json``) and the new ones train the
parent's flows on with a short BG-SPP schedule (:meth:`bgad.BGAD.update`); the result is a new model folder with
``update.json`` recording its lineage. The parent run is never modified.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.images import IMAGE_SUFFIXES
from ..data.layouts import DatasetSpec, labelled_defects
from ..detector import BGAD
from ..errors import BGADError, DatasetError
from .model_folder import check_new_folder, write_model_folder
from .runs import RUN_JSON, read_run_json

UPDATE_JSON = "update.json"


def update_run(
    run: Path,
    output: Path,
    defect_dirs: Sequence[Path],
    mask_dirs: Sequence[Path] = (),
    *,
    normal_dir: Path | None = None,
    meta_epochs: int | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train ``run``'s model on, on ``device``, with its training images plus the defects of ``defect_dirs`` (masks
    in ``mask_dirs`` or beside them) and the good images of ``normal_dir``; write it into the new folder
    ``output``."""
    check_new_folder(output, run)
    if not (run / RUN_JSON).is_file():
        raise BGADError(f"not a bgad run: {run / RUN_JSON} is missing (update needs the run's training images)")
    info = read_run_json(run / RUN_JSON)
    parent = BGAD.load(run).to(device)
    category = DatasetSpec.from_dict(info["dataset"]).load()
    by_name = {category.relative(s.path): s for s in category.test + category.known}
    missing = [name for name in info["known_anomalies"] if name not in by_name]
    if missing:
        raise BGADError(f"known anomaly {missing[0]} of {run} is no longer in its dataset")
    known = [by_name[name] for name in info["known_anomalies"]]
    added, problems = labelled_defects(defect_dirs, mask_dirs)
    if problems:
        raise DatasetError(problems)
    if not added:
        raise BGADError("no new defect images given")
    new_normals = _images(normal_dir) if normal_dir is not None else []
    anomalies = known + added
    updated = parent.update(
        [s.path for s in category.train] + new_normals,
        [s.path for s in anomalies],
        [s.mask_path for s in anomalies],
        meta_epochs=meta_epochs,
        progress=progress,
    )
    record = {
        "parent_run": str(run.resolve()),
        "parent_known_anomalies": info["known_anomalies"],
        "added_anomalies": [str(s.path.resolve()) for s in added],
        "added_normals": [str(p.resolve()) for p in new_normals],
        "meta_epochs": len(updated.history_),
        "train_seconds": round(updated.train_seconds_, 1),
        "thresholds": updated.thresholds_._asdict(),
    }
    write_model_folder(updated, output, run, UPDATE_JSON, record)
    return record


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise BGADError(f"normal folder not found: {folder}")
    images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise BGADError(f"no images in normal folder {folder}")
    return images
