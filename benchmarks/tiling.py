"""Tiling for large images: is a 12-px defect on a 4096 x 4096 image found with tiles, and lost without?

``mosaic``: 4096 x 4096 images are mosaics of 256-px crops of Magnetic Tile's good images (16 x 16 crops, every
image a new draw). Defects are 12-px discs darkened to half their brightness. Two models with the same schedule
train on good mosaics and one mosaic with eight defects (their masks known): the whole image resized to 256
("resized", 32 good mosaics: with fewer its per-position Gaussian has too few samples), and 256-px tiles at the
image's own resolution ("tiled", 32-px overlap, the first 2 good mosaics: 722 tiles). Both score held-out mosaics
(good ones, and ones with one defect each): image AUROC, how many defects are *found* (score above the image
threshold and the map's peak within 12 px of the defect), and prediction time and peak memory per megapixel
(a fresh process that loads the saved model and predicts one mosaic).

``runs``: two runs of the same dataset (e.g. bottle, resized vs tiled, from ``bgad fit``) compared at each image's
own resolution: every evaluation image of the first run is predicted by both models, and pixel metrics are taken
against the original masks (the fair comparison: the tiled map is not downsampled first).

    python benchmarks/tiling.py mosaic --data-root ../shared/data/surface --output runs/tiling_mosaic
    python benchmarks/tiling.py runs RUN_RESIZED RUN_TILED
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bgad import BGAD, BGADConfig
from bgad.app.record import read_run
from bgad.data.images import read_image, read_mask
from bgad.metrics import aupro, image_auroc, pixel_auroc

SIDE, CROP, DEFECT = 4096, 256, 12
SCHEDULE = {"train": {"meta_epochs": 4, "extract_batch_size": 4}}
MODELS = {  # name: (config, good mosaics trained on)
    "resized": ({"model": {}}, 32),
    "tiled": ({"model": {"tile_size": 256, "tile_overlap": 32}}, 2),
}


def mosaic(goods: list[Path], rng: np.random.Generator) -> np.ndarray:
    """A SIDE x SIDE RGB mosaic of random CROP-px crops of the good images (each scaled so it holds a crop)."""
    out = np.empty((SIDE, SIDE, 3), np.uint8)
    for top in range(0, SIDE, CROP):
        for left in range(0, SIDE, CROP):
            image = read_image(goods[int(rng.integers(len(goods)))])
            scale = max(1.0, CROP / min(image.size))
            if scale > 1:
                image = image.resize((round(image.width * scale) + 1, round(image.height * scale) + 1))
            y, x = int(rng.integers(image.height - CROP + 1)), int(rng.integers(image.width - CROP + 1))
            out[top : top + CROP, left : left + CROP] = np.asarray(image)[y : y + CROP, x : x + CROP]
    return out


def add_defects(image: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list]:
    """Darken ``count`` DEFECT-px discs to half their brightness; return the image, the mask and the centres."""
    image, mask, centres = image.copy(), np.zeros(image.shape[:2], bool), []
    yy, xx = np.mgrid[0:DEFECT, 0:DEFECT]
    disc = (yy - (DEFECT - 1) / 2) ** 2 + (xx - (DEFECT - 1) / 2) ** 2 <= (DEFECT / 2) ** 2
    for _ in range(count):
        y, x = (int(v) for v in rng.integers(64, SIDE - 64 - DEFECT, size=2))
        patch = image[y : y + DEFECT, x : x + DEFECT]
        patch[disc] = patch[disc] // 2
        mask[y : y + DEFECT, x : x + DEFECT] |= disc
        centres.append((y + DEFECT // 2, x + DEFECT // 2))
    return image, mask, centres


def peak_memory_and_time(model_dir: Path, image_path: Path) -> dict[str, float]:
    """Load the saved model in a fresh process, predict one image twice (the second timed); its peak RSS in MB
    (VmHWM: unlike getrusage's maxrss, which a child inherits from its parent at fork, it is the process's own)."""
    code = (
        "import re, sys, time; from pathlib import Path; from bgad import BGAD; d = BGAD.load(sys.argv[1]);"
        "d.predict(sys.argv[2]); t = time.perf_counter(); d.predict(sys.argv[2]); s = time.perf_counter() - t;"
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', Path('/proc/self/status').read_text()).group(1);"
        "print(s, int(hwm) / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(model_dir), str(image_path)], capture_output=True, text=True)
    seconds, rss = (float(v) for v in out.stdout.split())
    return {"predict_seconds": seconds, "peak_rss_mb": rss}


def run_mosaic(data_root: Path, output: Path) -> dict:
    rng = np.random.default_rng(0)
    goods = sorted((data_root / "magnetic_tile" / "train" / "good").iterdir())
    output.mkdir(parents=True, exist_ok=True)
    train_good = [mosaic(goods, rng) for _ in range(max(n for _, n in MODELS.values()))]
    known, known_mask, _ = add_defects(mosaic(goods, rng), 8, rng)
    test_good = [mosaic(goods, rng) for _ in range(4)]
    test_bad = [add_defects(mosaic(goods, rng), 1, rng) for _ in range(6)]
    probe = output / "probe.png"
    Image.fromarray(test_bad[0][0]).save(probe)
    results = {}
    for name, (model, n_good) in MODELS.items():
        config = BGADConfig.from_dict({**SCHEDULE, **model})
        start = time.perf_counter()
        detector = BGAD(config).fit(train_good[:n_good], [known], [known_mask])
        fit_seconds = time.perf_counter() - start
        good = [p.score for p in detector.predict_batch(test_good, batch_size=1)]
        bad = detector.predict_batch([b[0] for b in test_bad], batch_size=1)
        found = 0
        for prediction, (_, _, centres) in zip(bad, test_bad, strict=True):
            peak = np.unravel_index(prediction.anomaly_map.argmax(), prediction.anomaly_map.shape)
            near = max(abs(peak[0] - centres[0][0]), abs(peak[1] - centres[0][1])) <= DEFECT
            found += int(prediction.is_anomalous and near)
        scores = np.array(good + [p.score for p in bad])
        labels = np.array([0] * len(good) + [1] * len(bad))
        detector.save(output / name)
        cost = peak_memory_and_time(output / name, probe)
        megapixels = SIDE * SIDE / 1e6
        results[name] = {
            "image_auroc": image_auroc(scores, labels),
            "found": f"{found}/{len(bad)}",
            "good_flagged": f"{sum(s > detector.thresholds_.image for s in good)}/{len(good)}",
            "fit_seconds": round(fit_seconds, 1),
            "predict_seconds_per_mp": round(cost["predict_seconds"] / megapixels, 3),
            "peak_rss_mb": round(cost["peak_rss_mb"]),
        }
        print(name, results[name], file=sys.stderr)
    (output / "mosaic.json").write_text(json.dumps(results, indent=2))
    return results


def run_pair(resized_run: Path, tiled_run: Path) -> dict:
    record = read_run(resized_run / "run.json")
    category = record.dataset.load()
    known = set(record.known_anomalies)  # both runs must share them (same dataset, seed and sampling)
    if read_run(tiled_run / "run.json").known_anomalies != record.known_anomalies:
        raise SystemExit("the two runs trained on different known anomalies")
    samples = [s for s in category.test if category.relative(s.path) not in known]
    masks = [read_mask(s.mask_path) if s.mask_path else None for s in samples]
    results = {}
    for run in (resized_run, tiled_run):
        detector = BGAD.load(run)
        start = time.perf_counter()
        predictions = detector.predict_batch([s.path for s in samples], batch_size=1)
        seconds = (time.perf_counter() - start) / len(samples)
        maps = np.stack([p.anomaly_map for p in predictions])
        truth = np.stack([m if m is not None else np.zeros(maps.shape[1:], bool) for m in masks])
        labels = np.array([s.is_anomalous for s in samples], dtype=np.int64)
        results[run.name] = {
            "image_auroc": image_auroc(np.array([p.score for p in predictions]), labels),
            "pixel_auroc": pixel_auroc(maps, truth),
            "pixel_aupro": aupro(maps, truth),
            "seconds_per_image": round(seconds, 3),
        }
        print(run.name, results[run.name], file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    first = commands.add_parser("mosaic")
    first.add_argument("--data-root", type=Path, required=True, help="the folder holding magnetic_tile")
    first.add_argument("--output", type=Path, required=True)
    second = commands.add_parser("runs")
    second.add_argument("runs", type=Path, nargs=2)
    args = parser.parse_args()
    results = run_mosaic(args.data_root, args.output) if args.command == "mosaic" else run_pair(*args.runs)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
