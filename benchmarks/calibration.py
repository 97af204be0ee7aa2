"""Where the scores that set the thresholds come from: three candidates, on the same split, measured on held-out data.

- ``in-sample`` (bgad 0.2): the training normals scored by the model fitted on them (``calibration_folds: 0``);
- ``holdout``: a seeded share (``--holdout``, default 0.2) of the training normals is kept out of the fit, and the
  model is then calibrated on it (``BGAD.calibrate``): out of sample, but trained on fewer normals;
- ``cross-fit`` (the default): every normal's vectors normalized with statistics of the other folds
  (:mod:`bgad.method.crossfit`); the flows train on them and the calibration uses them.

Each is evaluated on the category's evaluation images (the known anomalies left out): threshold-free metrics, the
verdicts at its own thresholds, the training time, and how far its calibration scores are from the scores of the
evaluation's good images (two-sample Kolmogorov-Smirnov statistic and p-value: a small statistic means thresholds
set on the calibration scores transfer to new good parts). Nothing is chosen from these images inside the
library; this script is how the default was chosen. Run on an idle machine:

    python benchmarks/calibration.py --data-root ../shared/data/mvtec_ad --categories bottle,transistor [--seed 0]
"""

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
from scipy.stats import ks_2samp

from bgad import BGAD, load_config
from bgad.data.layouts import load_mvtec
from bgad.data.samples import make_split
from bgad.evaluation import decision_summary, evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--categories", default="bottle,transistor")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--holdout", type=float, default=0.2)
    parser.add_argument("--candidates", default="in-sample,holdout,cross-fit")
    args = parser.parse_args()
    base = load_config("default")
    base = dataclasses.replace(base, train=dataclasses.replace(base.train, seed=args.seed))
    print(
        "| data | calibration | train s | image AUROC | pixel AUROC | AUPRO | good flagged | recall | image F1 "
        "(best) | mask IoU | KS stat (p) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.categories.split(","):
        split = make_split(load_mvtec(args.data_root, name), base.train)
        normals = [s.path for s in split.train]
        known = ([s.path for s in split.known], [s.mask_path for s in split.known])
        for candidate in args.candidates.split(","):
            folds = 0 if candidate in ("in-sample", "holdout") else base.threshold.calibration_folds
            config = dataclasses.replace(base, threshold=dataclasses.replace(base.threshold, calibration_folds=folds))
            start = time.perf_counter()
            if candidate == "holdout":
                order = np.random.default_rng(args.seed).permutation(len(normals))
                held = max(1, round(args.holdout * len(normals)))
                train, calibration = order[held:], order[:held]
                detector = BGAD(config).fit([normals[i] for i in train], *known, progress=False)
                detector = detector.calibrate([normals[i] for i in calibration], *known)
            else:
                detector = BGAD(config).fit(normals, *known, progress=False)
            seconds = time.perf_counter() - start
            evaluation = evaluate(detector, split.evaluation, progress=False)
            metrics = evaluation.metrics()
            decided = decision_summary(evaluation.decisions(detector.thresholds_))
            good = evaluation.scores[evaluation.labels == 0]
            ks = ks_2samp(detector.normal_scores_, good)
            print(
                f"| {name} | {candidate} | {seconds:.0f} | {metrics.image_auroc:.4f} | {metrics.pixel_auroc:.4f} | "
                f"{metrics.pixel_aupro:.4f} | {decided['good_flagged']} of {decided['good_images']} | "
                f"{decided['recall']:.3f} | {decided['image_f1']:.3f} ({decided['image_f1'] + decided['f1_gap']:.3f})"
                f" | {decided['mask_iou']:.3f} | {ks.statistic:.2f} ({ks.pvalue:.2g}) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
