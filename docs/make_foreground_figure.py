"""Draw docs/images/foreground_bottle.png: estimated foregrounds and synthetic anomalies on real MVTec AD images.

Usage (the data stay where they are; nothing is copied into the repository):

    python docs/make_foreground_figure.py /path/to/mvtec_ad/bottle [--out docs/images/foreground_bottle.png]

Each row is one normal training image: the image, its estimated foreground (tinted, outlined), a RandAugmented
CutPaste anomaly made from a real test defect and its ground-truth mask, and an NSA anomaly, labels outlined.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from bgad.data.foreground import estimate_foreground
from bgad.data.synthesis import cut_paste, nsa


def load(path: Path, size: int, *, mask: bool = False) -> np.ndarray:
    image = Image.open(path)
    if mask:
        return np.asarray(image.convert("L").resize((size, size), Image.Resampling.NEAREST)) > 127
    return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))


def defects(category: Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of the test defects, one defect type after another, in name order."""
    pairs = []
    for folder in sorted(p for p in (category / "test").iterdir() if p.is_dir() and p.name != "good"):
        for image in sorted(folder.glob("*.png")):
            mask = category / "ground_truth" / folder.name / f"{image.stem}_mask.png"
            if mask.is_file():
                pairs.append((image, mask))
                break
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("category", type=Path, help="an MVTec AD category folder, e.g. .../mvtec_ad/bottle")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "images" / "foreground_bottle.png")
    parser.add_argument("--size", type=int, default=256, help="working resolution in pixels")
    parser.add_argument("--rows", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    train = sorted((args.category / "train" / "good").glob("*.png"))
    picks = [train[i] for i in np.linspace(0, len(train) - 1, args.rows).astype(int)]
    sources = defects(args.category)
    if not train or not sources:
        raise SystemExit(f"{args.category}: needs train/good images and test defects with ground_truth masks")

    titles = ["normal image", "estimated foreground", "CutPaste (real defect)", "NSA"]
    figure = Figure(figsize=(2.2 * len(titles), 2.2 * args.rows), dpi=100, layout="constrained")
    axes = figure.subplots(args.rows, len(titles), squeeze=False)
    for row, path in enumerate(picks):
        normal = load(path, args.size)
        foreground = estimate_foreground(normal)
        defect_path, mask_path = sources[row % len(sources)]
        pasted, pasted_label = cut_paste(
            normal, foreground, load(defect_path, args.size), load(mask_path, args.size, mask=True), rng
        )
        other = load(train[int(rng.integers(len(train)))], args.size)
        blended, blended_label = nsa(other, normal, foreground, rng)

        tinted = normal.astype(np.float32)
        tinted[~foreground] = 0.4 * tinted[~foreground] + 0.6 * np.array([40, 40, 200])
        panels = [
            (normal, None),
            (tinted.astype(np.uint8), foreground),
            (pasted, pasted_label),
            (blended, blended_label),
        ]
        for column, (picture, outline) in enumerate(panels):
            ax = axes[row, column]
            ax.imshow(picture)
            if outline is not None and outline.any() and not outline.all():
                colour = "lime" if column == 1 else "yellow"
                ax.contour(outline.astype(float), levels=[0.5], colors=colour, linewidths=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[column], fontsize=9)
        axes[row, 0].set_ylabel(f"{path.name}, {foreground.mean():.0%} fg", fontsize=8)
        axes[row, 2].set_xlabel(f"from {defect_path.parent.name}/{defect_path.name}", fontsize=7)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    # A 256-colour palette keeps the photographs' PNG small enough for the docs (< 400 KB).
    rendered = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])
    rendered.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        args.out, optimize=True
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
