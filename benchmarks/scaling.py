"""How training time and memory grow with the number of training images and the input size.

Run: python benchmarks/scaling.py DATA_ROOT CATEGORY OUTPUT_DIR   (on an idle machine; a few minutes)

Each point is a separate ``bgad fit`` process (so that its peak RSS is its own) on the first N training images
of CATEGORY, with 2 meta-epochs: per-epoch cost is what scales, and a full run costs about
extraction + meta_epochs x epoch. Writes OUTPUT_DIR/scaling.md and OUTPUT_DIR/scaling.png.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

POINTS = [(50, 256), (100, 256), (200, 256), (50, 384), (50, 512)]
META_EPOCHS = 2


def subset(data_root: Path, category: str, n: int, out: Path) -> Path:
    """A category folder linking the first ``n`` training images and the whole test set."""
    root = out / f"data_{n}"
    target = root / category
    if not target.exists():
        (target / "train" / "good").mkdir(parents=True)
        for image in sorted((data_root / category / "train" / "good").iterdir())[:n]:
            (target / "train" / "good" / image.name).symlink_to(image.resolve())
        for folder in ("test", "ground_truth"):
            (target / folder).symlink_to((data_root / category / folder).resolve())
    return root


def main() -> None:
    data_root, category, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, size in POINTS:
        config = out / f"config_{size}.yaml"
        train = {"meta_epochs": META_EPOCHS, "warmup_meta_epochs": 1}
        config.write_text(yaml.safe_dump({"model": {"image_size": size}, "train": train}))
        run = out / f"run_{n}_{size}"
        start = time.perf_counter()
        command = ["bgad", "fit", "--data-root", str(subset(data_root, category, n, out)), "--category", category]
        child = subprocess.Popen([*command, "--output", str(run), "--config", str(config), "--overwrite", "--quiet"])
        _, status, usage = os.wait4(child.pid, 0)  # this child's own resource usage
        if status:
            raise SystemExit(f"bgad fit failed for N={n}, S={size}")
        wall = time.perf_counter() - start
        peak_mb = usage.ru_maxrss / 1024
        log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
        epoch = log[-1]["seconds"]
        train = json.loads((run / "metrics.json").read_text())["train_seconds"]
        rows.append((n, size, train, epoch, wall, peak_mb))
        print(f"N={n} S={size}: train {train:.0f} s, epoch {epoch:.1f} s, wall {wall:.0f} s, peak {peak_mb:.0f} MB")
    lines = [
        f"| training images | input size | train s ({META_EPOCHS} meta-epochs) | s per phase-2 meta-epoch "
        "| wall s (incl. evaluation) | peak RSS MB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {n} | {s} | {t:.0f} | {e:.1f} | {w:.0f} | {m:.0f} |" for n, s, t, e, w, m in rows]
    (out / "scaling.md").write_text("\n".join(lines) + "\n")
    figure = Figure(figsize=(8, 3.2))
    by_images, by_size = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    by_images.plot([r[0] for r in rows if r[1] == 256], [r[3] for r in rows if r[1] == 256], marker="o")
    by_images.set_xlabel("training images (256 px)")
    by_size.plot([r[1] for r in rows if r[0] == 50], [r[3] for r in rows if r[0] == 50], marker="o")
    by_size.set_xlabel("input size, px (50 images)")
    for ax in (by_images, by_size):
        ax.set_ylabel("seconds per phase-2 meta-epoch")
        ax.set_ylim(bottom=0)
    figure.tight_layout()
    FigureCanvasAgg(figure).print_png(out / "scaling.png")


if __name__ == "__main__":
    main()
