"""``bgad predict`` on a folder, by what it writes: heatmaps at PNG level 6 (bgad 0.3) and 1, masks only, nothing.

Calls :func:`bgad.app.prediction.predict_folder` in one process (model loading not counted), the settings
interleaved over ``--rounds`` rounds; prints images/s per setting. Run on an idle machine:

    python benchmarks/predict_folder.py --run RUN --images ../shared/data/mvtec_ad/bottle/test
"""

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import bgad.app.prediction as prediction
from bgad.app.prediction import collect_images, predict_folder
from bgad.deploy.engines import load_detector

SETTINGS = [  # (name, --maps, PNG compression level)
    ("heatmaps, level 6", "all", 6),
    ("heatmaps, level 1", "all", 1),
    ("masks", "masks", 1),
    ("none", "none", 1),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    images, _ = collect_images([args.images])
    detector = load_detector(args.run, "torch")
    rates: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "out"
        for _ in range(args.rounds):
            for name, maps, level in SETTINGS:
                prediction.PNG_COMPRESS_LEVEL = level
                shutil.rmtree(out, ignore_errors=True)
                start = time.perf_counter()
                options = {"batch_size": args.batch_size, "maps": maps, "problems": [], "progress": False}
                predict_folder(detector, images, out, **options)
                rates.setdefault(name, []).append(len(images) / (time.perf_counter() - start))
    for name, values in rates.items():
        print(f"{name}: {statistics.median(values):.2f} images/s ({', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
