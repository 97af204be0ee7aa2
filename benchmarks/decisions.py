"""Verdicts and masks at the model's thresholds on saved runs, with bgad 0.2's decision rules and with today's.

0.2: every image gets the map above the pixel threshold as its mask, and the pixel threshold is the F1-optimal one
on the known anomalies' pooled pixels (what a 0.2 run's model.json holds). Now: masks follow the verdict (empty on
images judged good) and the pixel threshold gives the best mean per-image mask F1 on the known anomalies and the
flagged training normals. The model is recalibrated on its own training normals and known anomalies, which gives
the fit's calibration again; only the thresholds differ. No test image is used to set anything.

Run: python benchmarks/decisions.py --data-root ../shared/data/mvtec_ad RUN [RUN ...]   (prints a markdown table)
"""

import argparse
import json
from pathlib import Path

from bgad import BGAD
from bgad.data.layouts import load_mvtec
from bgad.data.samples import Split
from bgad.evaluation import evaluate


def decisions(run: Path, data_root: Path) -> list[str]:
    info = json.loads((run / "run.json").read_text())
    category = load_mvtec(data_root, info["category"])
    names = set(info["known_anomalies"])
    known = tuple(s for s in category.test if category.relative(s.path) in names)
    split = Split(category, known)
    detector = BGAD.load(run)
    evaluation = evaluate(detector, split.evaluation, progress=False)
    now = detector.calibrate([s.path for s in split.train], [s.path for s in known], [s.mask_path for s in known])
    rows = []
    for rule, thresholds, every in (("0.2", detector.thresholds_, True), ("now", now.thresholds_, False)):
        d = evaluation.decisions(thresholds, mask_every_image=every)
        n_good = d["image"]["fp"] + d["image"]["tn"]
        cells = [
            info["category"],
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
