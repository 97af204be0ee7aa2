"""Adding labelled defects to a trained model: BGAD.update against a fresh fit, on the same evaluation images.

For each category: the default 10 known anomalies (stratified, seed 0) are split into two halves of 5 (alternating
in (type, path) order). (c) is a fresh fit on the first 5; (a) is (c) updated with all 10 (BGAD.update with the
default ``train.update_normal_fraction`` and ``train.update_meta_epochs``; ``--variants`` gives others: the fraction
of the training normals the update trains on, a seeded sample, and its BG-SPP meta-epochs); (b) is a fresh fit on
all 10. All are evaluated on the images the 10-anomaly split leaves for evaluation. Run on an idle machine:

    python benchmarks/update.py --data-root ../shared/data/mvtec_ad --categories bottle,transistor \
        [--variants 1:3,0.5:6]
"""

import argparse
from pathlib import Path

from bgad import BGAD, load_config
from bgad.data.layouts import load_mvtec
from bgad.data.samples import make_split
from bgad.evaluation import evaluate


def _variants(text: str) -> list[tuple[float, int]]:
    """``FRACTION:META_EPOCHS,...``"""
    return [(float(f), int(e)) for f, e in (item.split(":") for item in text.split(","))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--categories", default="bottle,transistor")
    parser.add_argument("--variants", type=_variants, help="FRACTION:META_EPOCHS,... (default: the configuration's)")
    args = parser.parse_args()
    config = load_config("default")
    variants = args.variants or [(config.train.update_normal_fraction, config.train.update_meta_epochs)]
    print("| data | model | known anomalies | train s | image AUROC | pixel AUROC | AUPRO |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.categories.split(","):
        category = load_mvtec(args.data_root, name)
        split = make_split(category, config.train)
        ordered = sorted(split.known, key=lambda s: (s.defect_type, s.path))
        half = ordered[::2]
        normals = [s.path for s in split.train]
        anomalies, masks = [s.path for s in ordered], [s.mask_path for s in ordered]

        c = BGAD(config).fit(normals, [s.path for s in half], [s.mask_path for s in half], progress=False)
        _, aupro_c = _row(name, "(c) fit, 5", c, 5, split.evaluation)
        b = BGAD(config).fit(normals, anomalies, masks, progress=False)
        seconds_b, aupro_b = _row(name, "(b) fit, 10", b, 10, split.evaluation)
        for fraction, meta_epochs in variants:
            a = c.update(normals, anomalies, masks, meta_epochs=meta_epochs, normal_fraction=fraction, progress=False)
            label = f"(a) update, +5 ({fraction:.0%} of the normals, {meta_epochs} meta-epochs)"
            seconds_a, aupro_a = _row(name, label, a, 10, split.evaluation)
            fresh_gain = aupro_b - aupro_c
            # The share of the fresh fit's AUPRO gain the update recovers; meaningless when there is no gain.
            gain = f"{(aupro_a - aupro_c) / fresh_gain:.2f}" if abs(fresh_gain) >= 0.002 else "n/a"
            print(f"| {name} | update / fit | | {seconds_a / seconds_b:.2f} | | | AUPRO gain share {gain} |")


def _row(name: str, label: str, detector: BGAD, known: int, samples: tuple) -> tuple[float, float]:
    """Evaluate ``detector``, print its table row; return its training seconds and AUPRO."""
    m = evaluate(detector, samples, progress=False).metrics()
    print(
        f"| {name} | {label} | {known} | {detector.train_seconds_:.0f} | {m.image_auroc:.4f} "
        f"| {m.pixel_auroc:.4f} | {m.pixel_aupro:.4f} |",
        flush=True,
    )
    return detector.train_seconds_, m.pixel_aupro


if __name__ == "__main__":
    main()
