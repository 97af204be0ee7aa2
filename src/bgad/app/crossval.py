"""``bgad fit --cv N``: honest metrics for a model that trains on every labelled defect.

A deployed model should learn from all the defects a user labelled (``--num-anomalies all``), but then no defect is
left to evaluate it on. Cross-validation answers for it: the defects (with masks) are dealt into N folds, each
defect type spread over them; fold k trains on the other folds' defects and is evaluated on its own defects plus
the held-out normals. Each fold is an ordinary run folder (``OUTPUT/fold<k>``, anomaly sampling ``fold:k/N``);
``cv.json`` and ``cv.md`` hold every fold's metrics and their mean ± std. Finished folds are reused when the same
command runs again.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from ..config import BGADConfig
from ..data.layouts import DatasetSpec
from ..errors import BGADError
from ..storage.serialization import write_json
from .record import RUN_JSON, read_run
from .runs import METRICS_JSON, fit_run
from .tables import mean_std

CV_JSON, CV_MD = "cv.json", "cv.md"
REPORTED = ("image_auroc", "pixel_auroc", "pixel_aupro", "image_ap", "pixel_ap")


def cross_validate(
    dataset: DatasetSpec,
    output: Path,
    config: BGADConfig,
    folds: int,
    **fit_options: Any,
) -> dict[str, Any]:
    """Fit the ``folds`` folds into ``output/fold<k>`` (reusing finished ones) and return the summary;
    ``fit_options`` (``overwrite``, ``eval_size``, ``drop_duplicates``, ``progress``, ``device``) go to every fold's
    :func:`bgad.app.runs.fit_run`."""
    if folds < 2:
        raise BGADError(f"cross-validation needs at least 2 folds, got {folds}")
    output.mkdir(parents=True, exist_ok=True)
    per_fold = []
    for k in range(folds):
        fold_config = BGADConfig.from_dict({"train": {"anomaly_sampling": f"fold:{k}/{folds}"}}, base=config)
        run = output / f"fold{k}"
        if _finished(run, dataset, fold_config):
            metrics = json.loads((run / METRICS_JSON).read_text())
        else:
            metrics = fit_run(dataset, run, fold_config, **fit_options).to_dict()
        per_fold.append({key: metrics[key] for key in (*REPORTED, "n_eval_images", "n_known_anomalies")})
    summary = {
        "folds": folds,
        "per_fold": per_fold,
        "mean": {key: statistics.fmean(fold[key] for fold in per_fold) for key in REPORTED},
        "std": {key: statistics.stdev(fold[key] for fold in per_fold) for key in REPORTED},
    }
    write_json(output / CV_JSON, summary)
    (output / CV_MD).write_text(_markdown(summary))
    return summary


def _finished(run: Path, dataset: DatasetSpec, config: BGADConfig) -> bool:
    """True for a fold run made with this dataset and configuration (an earlier invocation's)."""
    if not (run / METRICS_JSON).is_file() or not (run / RUN_JSON).is_file():
        return False
    record = read_run(run / RUN_JSON)
    return record.config == config and record.dataset == dataset


def _markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# {summary['folds']}-fold cross-validation over the labelled defects",
        "",
        "Each fold trains on the other folds' defects and is evaluated on its own defects and the held-out normals.",
        "",
        "| fold | known anomalies | evaluated images | " + " | ".join(REPORTED) + " |",
        "|---:|---:|---:|" + "---:|" * len(REPORTED),
    ]
    for k, fold in enumerate(summary["per_fold"]):
        cells = [str(k), str(fold["n_known_anomalies"]), str(fold["n_eval_images"])]
        lines.append("| " + " | ".join(cells + [f"{fold[key]:.3f}" for key in REPORTED]) + " |")
    means = [mean_std([fold[key] for fold in summary["per_fold"]], 3) for key in REPORTED]
    lines.append("| mean ± std | | | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"
