"""``bgad benchmark``'s tables: ``results.csv`` (one row per category, seed and method) and ``results.md`` (mean ±
std over seeds per method, the decisions at each method's thresholds, bgad's margin over the best floor)."""

from __future__ import annotations

import csv
import platform
import statistics
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..evaluation import DECISIONS
from .processes import usable_cpus

METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro", "image_ap", "pixel_ap")
COSTS = ("train_seconds", "inference_ms", "peak_rss_mb")
CSV_COLUMNS = ("category", "seed", "method", *METRICS, *DECISIONS, *COSTS)
INFERENCE_REPEATS = 5  # the benchmark times one image this many times, after warm-up (the median is reported)
# The only verified paper figure: the official code's comment on its MVTec AD command (see the md footnote).
PAPER_MVTEC_MEAN = {"image_auroc": 0.994, "pixel_auroc": 0.993}
MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip


def write_tables(
    output: Path,
    plan: dict[str, Any],
    results: dict[tuple[str, int], dict[str, Any]],
    notes: dict[str, str],
    methods: Sequence[str],
) -> tuple[Path, list[tuple[str, int]]]:
    """results.csv and results.md of the plan's tasks that have a result, for ``methods`` (bgad first, then the
    floors); returns results.md and the tasks without one."""
    names, seeds = plan["categories"], plan["seeds"]
    methods = [m for m in methods if plan["baseline"] or m == "bgad"]
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
    floors = [m for m in methods if m != "bgad"]
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
