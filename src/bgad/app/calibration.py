"""``bgad calibrate``: set a trained model's score calibration and thresholds again from new good images (and
optionally defects with masks), without retraining, into a new model folder; the run it came from is never
touched."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import TrainConfig
from ..data.checks import check_dataset
from ..data.layouts import load_folders
from ..detector import BGAD
from .model_folder import check_new_folder, write_model_folder

CALIBRATION_JSON = "calibration.json"


def calibrate_run(
    run: Path,
    output: Path,
    normal_dir: Path,
    *,
    defect_dirs: Sequence[Path] = (),
    mask_dirs: Sequence[Path] = (),
    target_fpr: float | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Write a copy of the model in ``run`` calibrated on ``device`` on the images of ``normal_dir`` (and the
    defects of ``defect_dirs`` with their masks) into the new folder ``output``; return what changed
    (``calibration.json``)."""
    check_new_folder(output, run)
    before = BGAD.load(run).to(device)
    data = load_folders(normal_dir, defect_dirs, mask_dirs, test_normal_ratio=0.0)
    # The checks of `bgad check` and `fit --from` (readable images, masks of their image's size and not empty, no
    # image both good and defect); no known anomalies are chosen: every defect given calibrates.
    check_dataset(data, TrainConfig(num_anomalies=0), progress=False).raise_for_problems()
    defects = [s for s in data.test if s.is_anomalous]
    after = before.calibrate(
        [s.path for s in data.train], [s.path for s in defects], [s.mask_path for s in defects], target_fpr=target_fpr
    )
    scores = after.normal_scores_
    summary = {
        "source_run": str(run.resolve()),
        "normal_dir": str(normal_dir.resolve()),
        "n_normal_images": len(data.train),
        "n_defect_images": len(defects),
        "target_fpr": target_fpr,
        "thresholds_before": before.thresholds_._asdict(),
        "thresholds": after.thresholds_._asdict(),
        # On the calibration images themselves: what the new image threshold flags of them.
        "normal_flagged_fraction": float(np.mean(scores > after.thresholds_.image)),
    }
    write_model_folder(after, output, run, CALIBRATION_JSON, summary)
    return summary
