"""Verdicts and masks at the thresholds on saved runs: bgad 0.2's decision rules against today's.

0.2: every image gets the map above the pixel threshold as its mask; the pixel threshold is the larger of the
training normals' 0.999 pixel quantile and the F1-optimal threshold on the known anomalies' pooled pixels. Now:
masks follow the verdict (empty on images judged good); the pixel threshold is the larger of the same quantile
and the one giving the best mean per-image mask F1 on the known anomalies and the flagged training normals. Both
use the run's image threshold rule and its score calibration, recomputed on its own training normals and known
anomalies (which gives the fit's calibration again). No test image is used to set anything.

Run: python benchmarks/decisions.py --data-root ../shared/data/mvtec_ad RUN [RUN ...]   (prints a markdown table)
"""

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import precision_recall_curve

from bgad import BGAD
from bgad.app.record import read_run
from bgad.data.layouts import load_mvtec
from bgad.data.samples import Split
from bgad.evaluation import evaluate
from bgad.method.thresholds import Thresholds


def pooled_f1_pixel_threshold(detector: BGAD, split: Split) -> float:
    """bgad 0.2's pixel threshold, from the training normals' and the known anomalies' maps."""
    normals = evaluate(detector, split.train, progress=False)
    known = evaluate(detector, split.known, progress=False)
    quantile = float(np.quantile(normals.anomaly_maps, detector.config.threshold.pixel_quantile))
    precision, recall, candidates = precision_recall_curve(known.masks.ravel(), known.anomaly_maps.ravel())
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return max(quantile, float(candidates[np.argmax(f1[:-1])]))


def decisions(run: Path, data_root: Path) -> list[str]:
    record = read_run(run / "run.json")
    category = load_mvtec(data_root, str(record.category))
    names = set(record.known_anomalies)
    split = Split(category, tuple(s for s in category.test if category.relative(s.path) in names))
    detector = BGAD.load(run)
    known = split.known
    now = detector.calibrate([s.path for s in split.train], [s.path for s in known], [s.mask_path for s in known])
    then = Thresholds(now.thresholds_.image, pooled_f1_pixel_threshold(now, split))
    evaluation = evaluate(now, split.evaluation, progress=False)
    rows = []
    for rule, thresholds, every in (("0.2", then, True), ("now", now.thresholds_, False)):
        d = evaluation.decisions(thresholds, mask_every_image=every)
        n_good = d["image"]["fp"] + d["image"]["tn"]
        cells = [
            record.category,
            rule,
            f"{thresholds.pixel:.3f}",
            f"{d['image']['f1']:.3f}",
            f"{d['good_images_with_masks']} / {n_good}",
            f"{d['mask_iou']:.3f}",
            f"{d['mask_f1']:.3f}",
            f"{d['pixel']['precision']:.3f}",
            f"{d['pixel']['recall']:.3f}",
            f"{d['pixel']['f1']:.3f}",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args()
    print(
        "| data | rule | pixel threshold | image F1 | good images with a mask | mask IoU | mask F1 | pixel precision "
        "| pixel recall | pixel F1 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in args.runs:
        print("\n".join(decisions(run, args.data_root)), flush=True)


if __name__ == "__main__":
    main()
