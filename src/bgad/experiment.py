"""Run folders: train, save and evaluate one MVTec-layout category, and re-evaluate a saved run.

A run folder holds the model files (:mod:`bgad.runs`), the known anomalies used for training, the training log,
the metrics and the HTML report.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from . import __version__
from .config import BGADConfig
from .data import evaluation_samples, load_mvtec_category, select_known_anomalies
from .detector import BGAD
from .errors import BGADError
from .evaluation import Evaluation, evaluate
from .report import write_report

RUN_JSON = "run.json"
METRICS_JSON = "metrics.json"
TRAIN_LOG = "train_log.jsonl"
KNOWN_ANOMALIES = "known_anomalies.txt"


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _write_report(
    evaluation: Evaluation, results: dict[str, Any], directory: Path, detector: BGAD, category: str
) -> None:
    title = f"bgad evaluation: {category}"
    scalars = {key: value for key, value in results.items() if not isinstance(value, dict)}
    write_report(evaluation, scalars, directory, title=title, image_threshold=detector.thresholds_.image)


def fit_run(
    data_root: Path, category_name: str, output: Path, config: BGADConfig, *, overwrite: bool, progress: bool
) -> dict[str, Any]:
    """Train, save and evaluate one category into ``output``; return the metrics.

    Everything is written into a temporary folder beside ``output`` that replaces it only at the end, so an
    error or Ctrl-C leaves nothing half-written.
    """
    if output.exists() and not overwrite and (not output.is_dir() or any(output.iterdir())):
        raise BGADError(f"output {output} already exists and is not empty (use --overwrite to replace it)")
    category = load_mvtec_category(data_root, category_name)
    known = select_known_anomalies(
        category, config.train.num_anomalies, seed=config.train.seed, sampling=config.train.anomaly_sampling
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        (staging / KNOWN_ANOMALIES).write_text("".join(f"{category.relative(s.path)}\n" for s in known))
        detector = BGAD(config).fit(
            [s.path for s in category.train],
            [s.path for s in known],
            [s.mask_path for s in known],
            log_path=staging / TRAIN_LOG,
            progress=progress,
        )
        detector.save(staging)
        run = {
            "bgad_version": __version__,
            "data_root": str(data_root.resolve()),
            "category": category.name,
            "known_anomalies": [category.relative(s.path) for s in known],
        }
        _write_json(staging / RUN_JSON, run)
        evaluation = evaluate(detector, evaluation_samples(category, known), progress=progress)
        results = evaluation.metrics()
        results.update(n_known_anomalies=len(known), train_seconds=round(detector.train_seconds_, 1))
        results["per_type"] = evaluation.per_type_metrics({s.defect_type for s in known})
        _write_json(staging / METRICS_JSON, results)
        _write_report(evaluation, results, staging, detector, category.name)
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return results


def test_run(run: Path, data_root: Path | None, category_name: str | None, *, progress: bool) -> dict[str, Any]:
    """Re-evaluate a saved run on its category (or another), leaving out the known anomalies it trained on."""
    run_json = run / RUN_JSON
    if not run_json.is_file():
        raise BGADError(f"not a bgad run: {run_json} is missing")
    info = json.loads(run_json.read_text())
    detector = BGAD.load(run)
    category = load_mvtec_category(data_root or Path(info["data_root"]), category_name or info["category"])
    used = set(info["known_anomalies"]) if category.name == info["category"] else set()
    samples = [s for s in category.test if category.relative(s.path) not in used]
    evaluation = evaluate(detector, samples, progress=progress)
    results = evaluation.metrics()
    results["n_known_anomalies"] = len(info["known_anomalies"])
    results["per_type"] = evaluation.per_type_metrics({Path(p).parts[1] for p in info["known_anomalies"]})
    _write_report(evaluation, results, run, detector, category.name)
    return results
