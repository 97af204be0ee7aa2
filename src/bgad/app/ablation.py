"""``bgad ablate``: what each part of BGAD adds, trained and evaluated on one category.

The variants share the known anomalies (removed from every variant's evaluation set, also from the one-class
flow's, which does not train with them) and differ only in what training uses:

1. one-class flow: maximum likelihood on normal images only, no anomalies at all;
2. + BG-SPP with the real known anomalies (no synthesis, no focal weights);
3. + RandAugmented CutPaste anomalies;
4. + the asymmetric focal weights: the full method (bgad's default).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..config import BGADConfig
from ..data.layouts import DatasetSpec
from .record import RUN_JSON, read_run
from .runs import METRICS_JSON, fit_run

_COLUMNS = ("image_auroc", "pixel_auroc", "pixel_aupro")


def variants(base: BGADConfig) -> dict[str, dict[str, Any]]:
    """Variant name -> config overrides on top of ``base``."""
    return {
        "one-class flow (ML only)": {
            "train": {"normal_only_meta_epochs": base.train.meta_epochs, "synthesis": "none"},
            "loss": {"focal": False},
        },
        "+ BG-SPP (real anomalies)": {"train": {"synthesis": "none"}, "loss": {"focal": False}},
        "+ CutPaste": {"train": {"synthesis": "cutpaste"}, "loss": {"focal": False}},
        "+ focal weights (full BGAD)": {"train": {"synthesis": "cutpaste"}, "loss": {"focal": True}},
    }


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def run_ablation(
    dataset: DatasetSpec, output: Path, base: BGADConfig, *, progress: bool = True, device: str = "cpu"
) -> Path:
    """Train every variant on ``device`` into ``output/<variant>`` (skipping finished ones) and write
    ``output/ablation.md``."""
    rows = []
    for name, overrides in variants(base).items():
        run = output / _slug(name)
        if not (run / METRICS_JSON).is_file():
            print(f"ablation: training '{name}' into {run}", file=sys.stderr)
            variant = BGADConfig.from_dict(overrides, base=base)
            fit_run(dataset, run, variant, overwrite=True, progress=progress, device=device)
        rows.append((name, json.loads((run / METRICS_JSON).read_text())))
    path = output / "ablation.md"
    path.write_text(_table(str(read_run(run / RUN_JSON).category), base, rows))
    return path


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _table(category: str, base: BGADConfig, rows: list[tuple[str, dict[str, Any]]]) -> str:
    train = base.train
    lines = [
        f"# Ablation on {category}",
        "",
        f"{train.num_anomalies} known anomalies, sampling `{train.anomaly_sampling}`, seed {train.seed}, "
        f"{train.meta_epochs} meta-epochs x {train.sub_epochs}. *unseen*: mean over the defect types that no known "
        "anomaly came from (only in the hard setting, `type:NAME`).",
        "",
        "| variant | image AUROC | pixel AUROC | AUPRO | unseen image AUROC | unseen pixel AUROC | unseen AUPRO "
        "| train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, metrics in rows:
        unseen = metrics.get("per_type", {}).get("unseen_mean", {})
        cells = [_fmt(metrics[c]) for c in _COLUMNS] + [_fmt(unseen.get(c)) for c in _COLUMNS]
        lines.append(f"| {name} | {' | '.join(cells)} | {metrics['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"
