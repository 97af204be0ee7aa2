"""Adding labelled defects to a trained model: BGAD.update against a fresh fit, on the same evaluation images.

For each category and seed: the 10 known anomalies the seed's stratified split picks are split into two halves of
5 (alternating in (type, path) order). (c) is a fresh fit on the first 5; (a) is (c) updated with all 10
(BGAD.update with the default ``train.update_normal_fraction``, ``train.update_meta_epochs`` and
``train.update_synthesis_refresh``; ``--variants`` gives others: the fraction of the training normals the update
trains on, a seeded sample, its BG-SPP meta-epochs and, optionally, the meta-epochs per synthetic pool); (b) is a
fresh fit on all 10. All are evaluated on the images the 10-anomaly split leaves for evaluation. Last, per variant,
the mean over seeds of the update's share of the fresh fit's AUPRO gain and of its training time over (b)'s. Run on
an idle machine:

    python benchmarks/update.py --data-root ../shared/data/mvtec_ad --categories transistor --seeds 0,1,2 \
        [--variants 0.5:6:1,0.5:6:6]
"""

import argparse
import statistics
from pathlib import Path

from bgad import BGAD, BGADConfig, load_config
from bgad.data.layouts import load_mvtec
from bgad.data.samples import make_split
from bgad.evaluation import evaluate


def _variants(text: str) -> list[tuple[float, int, int | None]]:
    """``FRACTION:META_EPOCHS[:REFRESH],...`` (REFRESH left out: the configuration's)"""
    out = []
    for item in text.split(","):
        fraction, meta_epochs, *refresh = item.split(":")
        out.append((float(fraction), int(meta_epochs), int(refresh[0]) if refresh else None))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--categories", default="bottle,transistor")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds of the split and the fits (default 0)")
    parser.add_argument("--variants", type=_variants, help="FRACTION:META_EPOCHS[:REFRESH],... (default: the config's)")
    args = parser.parse_args()
    base = load_config("default")
    train = base.train
    variants = args.variants or [(train.update_normal_fraction, train.update_meta_epochs, None)]
    shares: dict[tuple, list[tuple[float | None, float]]] = {}
    print("| data | seed | model | known anomalies | train s | image AUROC | pixel AUROC | AUPRO |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for name in args.categories.split(","):
        category = load_mvtec(args.data_root, name)
        for seed in (int(s) for s in args.seeds.split(",")):
            config = BGADConfig.from_dict({"train": {"seed": seed}}, base=base)
            split = make_split(category, config.train)
            ordered = sorted(split.known, key=lambda s: (s.defect_type, s.path))
            half = ordered[::2]
            normals = [s.path for s in split.train]
            anomalies, masks = [s.path for s in ordered], [s.mask_path for s in ordered]
            row = (name, seed, split.evaluation)
            c = BGAD(config).fit(normals, [s.path for s in half], [s.mask_path for s in half], progress=False)
            _, aupro_c = _row(*row, "(c) fit, 5", c, 5)
            b = BGAD(config).fit(normals, anomalies, masks, progress=False)
            seconds_b, aupro_b = _row(*row, "(b) fit, 10", b, 10)
            for variant in variants:
                fraction, meta_epochs, refresh = variant
                a = c.update(
                    normals,
                    anomalies,
                    masks,
                    meta_epochs=meta_epochs,
                    normal_fraction=fraction,
                    synthesis_refresh=refresh,
                    progress=False,
                )
                label = f"(a) update, +5 ({fraction:.0%} of the normals, {meta_epochs} meta-epochs"
                label += f", a pool every {refresh})" if refresh is not None else ")"
                seconds_a, aupro_a = _row(*row, label, a, 10)
                fresh_gain = aupro_b - aupro_c
                # The share of the fresh fit's AUPRO gain the update recovers; meaningless without a gain.
                share = (aupro_a - aupro_c) / fresh_gain if abs(fresh_gain) >= 0.002 else None
                shares.setdefault((name, variant), []).append((share, seconds_a / seconds_b))
                gain = "n/a" if share is None else f"{share:.2f}"
                print(f"| {name} | {seed} | update / fit | | {seconds_a / seconds_b:.2f} | | | gain share {gain} |")
    print("\n| data | variant | seeds | mean gain share | mean time share |\n|---|---|---:|---:|---:|")
    for (name, variant), values in shares.items():
        gains = [g for g, _ in values if g is not None]
        gain = f"{statistics.fmean(gains):.2f} ({len(gains)} with a gain)" if gains else "n/a"
        times = statistics.fmean(t for _, t in values)
        described = ":".join(str(v) for v in variant if v is not None)
        print(f"| {name} | {described} | {len(values)} | {gain} | {times:.2f} |")


def _row(name: str, seed: int, samples: tuple, label: str, detector: BGAD, known: int) -> tuple[float, float]:
    """Evaluate ``detector``, print its table row; return its training seconds and AUPRO."""
    m = evaluate(detector, samples, progress=False).metrics()
    print(
        f"| {name} | {seed} | {label} | {known} | {detector.train_seconds_:.0f} | {m.image_auroc:.4f} "
        f"| {m.pixel_auroc:.4f} | {m.pixel_aupro:.4f} |",
        flush=True,
    )
    return detector.train_seconds_, m.pixel_aupro


if __name__ == "__main__":
    main()
