"""Adding labelled defects to a trained model: BGAD.update against a fresh fit, on the same evaluation images.

For each category: the default 10 known anomalies (stratified, seed 0) are split into two halves of 5 (alternating
in (type, path) order). (c) is a fresh fit on the first 5; (a) is (c) updated with all 10 (BGAD.update, the default
3 BG-SPP meta-epochs); (b) is a fresh fit on all 10. All three are evaluated on the images the 10-anomaly split
leaves for evaluation. Run on an idle machine:

    python benchmarks/update.py --data-root ../shared/data/mvtec_ad --categories bottle,transistor
"""

import argparse
from pathlib import Path

from bgad import BGAD, load_config
from bgad.data.layouts import load_mvtec
from bgad.data.samples import make_split
from bgad.evaluation import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--categories", default="bottle,transistor")
    args = parser.parse_args()
    config = load_config("default")
    print("| data | model | known anomalies | train s | image AUROC | pixel AUROC | AUPRO |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.categories.split(","):
        category = load_mvtec(args.data_root, name)
        split = make_split(category, config.train)
        ordered = sorted(split.known, key=lambda s: (s.defect_type, s.path))
        half = ordered[::2]
        normals = [s.path for s in split.train]
        c = BGAD(config).fit(normals, [s.path for s in half], [s.mask_path for s in half], progress=False)
        a = c.update(normals, [s.path for s in ordered], [s.mask_path for s in ordered], progress=False)
        b = BGAD(config).fit(normals, [s.path for s in ordered], [s.mask_path for s in ordered], progress=False)
        results = {}
        for label, detector, known in (("(c) fit, 5", c, 5), ("(a) update, +5", a, 10), ("(b) fit, 10", b, 10)):
            m = evaluate(detector, split.evaluation, progress=False).metrics()
            results[label] = (detector.train_seconds_, m)
            print(
                f"| {name} | {label} | {known} | {detector.train_seconds_:.0f} | {m.image_auroc:.4f} "
                f"| {m.pixel_auroc:.4f} | {m.pixel_aupro:.4f} |",
                flush=True,
            )
        (_, mc), (ta, ma), (tb, mb) = results.values()
        fresh_gain = mb.pixel_aupro - mc.pixel_aupro
        # The share of the fresh fit's AUPRO gain the update recovers; meaningless when there is no gain.
        gain = f"{(ma.pixel_aupro - mc.pixel_aupro) / fresh_gain:.2f}" if abs(fresh_gain) >= 0.002 else "n/a"
        print(f"| {name} | update / fit | | {ta / tb:.2f} | | | AUPRO gain share {gain} |", flush=True)


if __name__ == "__main__":
    main()
