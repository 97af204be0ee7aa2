"""``bgad predict`` on files and folders: scores.csv, heatmaps and masks at each image's resolution.

Decoding the next batch and encoding the last batch's PNGs run in a small thread pool while the model scores the
current batch (PIL releases the GIL while it decodes and compresses), so a folder of large PNGs is bound by the
model rather than by image files.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.checks import size_problem
from ..data.images import IMAGE_SUFFIXES, read_image
from ..detector import BGAD, Prediction
from ..errors import BGADError
from ..export import OnnxDetector
from ..model_checks import ScoringError
from ..progress import progress as progress_bar
from .review import Scored
from .visualize import heatmap_overlay

SCORES_CSV = "scores.csv"


def collect_images(paths: Sequence[Path], skip: Path | None = None) -> tuple[list[Path], list[str]]:
    """Image files named directly or found (recursively) in folders, except under ``skip`` (the output folder, so
    that a second run does not score the first one's heatmaps), plus one problem line per bad path."""
    images, problems = [], []
    skipped = None if skip is None else skip.resolve()
    for path in paths:
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_SUFFIXES
                and (skipped is None or not p.resolve().is_relative_to(skipped))
            )
            images += found
            if not found:
                problems.append(f"no images in folder {path}")
        elif path.is_file():
            images.append(path)
        else:
            problems.append(f"not found: {path}")
    return images, problems


def _output_names(images: Sequence[Path]) -> list[str]:
    """File stems made unique (``name``, ``name_2``, ...) so that outputs from different folders never collide,
    also with a stem that already ends in ``_2``."""
    taken: set[str] = set()
    names = []
    for image in images:
        name, copy = image.stem, 1
        while name.casefold() in taken:  # case-insensitive: outputs may land on a case-insensitive file system
            copy += 1
            name = f"{image.stem}_{copy}"
        taken.add(name.casefold())
        names.append(name)
    return names


def _read_for_prediction(path: Path) -> Image.Image:
    picture = read_image(path)
    if problem := size_problem(picture, path):
        raise BGADError(problem)
    return picture


def _decode(batch: Sequence[Path]) -> tuple[dict[Path, Image.Image], list[str]]:
    """The readable images of a batch, and one problem line per unreadable one."""
    readable, problems = {}, []
    for image in batch:
        try:
            readable[image] = _read_for_prediction(image)
        except BGADError as err:
            problems.append(str(err))
    return readable, problems


def _write_maps(
    picture: Image.Image, prediction: Prediction, pixel_threshold: float, heatmap: Path, mask: Path
) -> None:
    overlay = heatmap_overlay(np.asarray(picture), prediction.anomaly_map, threshold=pixel_threshold)
    Image.fromarray(overlay).save(heatmap)
    Image.fromarray(prediction.mask.astype(np.uint8) * 255).save(mask)


def predict_folder(
    detector: BGAD | OnnxDetector,
    images: list[Path],
    output: Path,
    *,
    batch_size: int,
    mask_every_image: bool = False,
    problems: list[str],
    progress: bool = True,
) -> list[Scored]:
    """Score ``images`` into ``output`` and return them, in order; unreadable images go to ``problems`` (and to
    stderr as they are met)."""
    heatmaps, masks = output / "heatmaps", output / "masks"
    heatmaps.mkdir(parents=True, exist_ok=True)
    masks.mkdir(exist_ok=True)
    names = dict(zip(images, _output_names(images), strict=True))
    batches = [images[start : start + batch_size] for start in range(0, len(images), batch_size)]
    threshold, pixel_threshold = f"{detector.thresholds_.image:.6g}", detector.thresholds_.pixel
    # A row is written once its image's files are (an interrupted run keeps what it finished), in UTF-8 whatever
    # the locale; file names that are not valid UTF-8 keep their bytes.
    with (
        ThreadPoolExecutor(max_workers=2, thread_name_prefix="bgad-io") as pool,
        open(output / SCORES_CSV, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle,
        progress_bar(total=len(images), desc="predicting", unit="img", disable=not progress) as bar,
    ):
        writer = csv.writer(handle)
        writer.writerow(["path", "score", "normalized_score", "is_anomalous", "image_threshold"])
        finished: list[Scored] = []

        def finish(writing: list[tuple[Future, Path, Prediction]]) -> None:
            for future, image, prediction in writing:
                future.result()
                score, normalized = f"{prediction.score:.6g}", f"{prediction.normalized_score:.4f}"
                writer.writerow([str(image), score, normalized, int(prediction.is_anomalous), threshold])
                handle.flush()
                peak = float(prediction.anomaly_map.max())
                heatmap = heatmaps / f"{names[image]}.png"
                p = prediction
                finished.append(Scored(image, heatmap, p.score, p.normalized_score, p.is_anomalous, peak))

        upcoming = pool.submit(_decode, batches[0]) if batches else None
        writing: list[tuple[Future, Path, Prediction]] = []
        for index, batch in enumerate(batches):
            readable, errors = upcoming.result()
            if index + 1 < len(batches):
                upcoming = pool.submit(_decode, batches[index + 1])
            for error in errors:
                problems.append(error)
                print(f"bgad: error: {error}", file=sys.stderr)
            try:
                predictions = detector.predict_batch(
                    list(readable.values()), batch_size=batch_size, mask_every_image=mask_every_image
                )
            except ScoringError as err:
                raise ScoringError(f"{', '.join(map(str, readable))}: {err}") from None
            finish(writing)  # the previous batch: its files were written while this one was scored
            writing = []
            for (image, picture), prediction in zip(readable.items(), predictions, strict=True):
                heatmap, mask = heatmaps / f"{names[image]}.png", masks / f"{names[image]}_mask.png"
                future = pool.submit(_write_maps, picture, prediction, pixel_threshold, heatmap, mask)
                writing.append((future, image, prediction))
            bar.update(len(batch))
        finish(writing)
    return finished
