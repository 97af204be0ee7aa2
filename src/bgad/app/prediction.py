"""``bgad predict`` on files and folders: scores.csv, heatmaps and masks at each image's resolution.

Decoding the next batch and encoding the last batch's PNGs run in a small thread pool while the model scores the
current batch (PIL releases the GIL while it decodes and compresses), so a folder of large PNGs is bound by the
model rather than by image files.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.checks import size_problem
from ..data.images import IMAGE_SUFFIXES, read_image
from ..errors import BGADError
from ..inference import Detector, Prediction
from ..method.thresholds import Thresholds
from ..runtime.progress import progress as progress_bar
from ..storage.model_checks import ScoringError
from ..storage.model_files import MODEL_JSON
from .csv_cells import safe_cell
from .review import Scored
from .visualize import heatmap_overlay

SCORES_CSV = "scores.csv"
MAPS = ("all", "masks", "none")  # what predict writes beside scores.csv: heatmaps and masks, masks only, nothing
# zlib level 1: a 900-px heatmap compresses in about a fifth of the time of PIL's default level 6, for a file about
# a quarter larger (measured in docs/performance.md).
PNG_COMPRESS_LEVEL = 1
PREDICT_MARK = ".bgad-predict"  # in every folder predict writes: a later predict may write over it, and only then


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
    return _first_of_each(images), problems


def _first_of_each(images: list[Path]) -> list[Path]:
    """``images`` without a second mention of the same file (given twice, or also found in a folder)."""
    seen: set[Path] = set()
    unique = []
    for image in images:
        if (resolved := image.resolve()) not in seen:
            seen.add(resolved)
            unique.append(image)
    return unique


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
    picture: Image.Image, prediction: Prediction, pixel_threshold: float, heatmap: Path | None, mask: Path | None
) -> None:
    """Write the heatmap overlay and the mask of one image (each only where a path is given)."""
    if heatmap is not None:
        overlay = heatmap_overlay(np.asarray(picture), prediction.anomaly_map, threshold=pixel_threshold)
        with _naming(heatmap):
            Image.fromarray(overlay).save(heatmap, compress_level=PNG_COMPRESS_LEVEL)
    if mask is not None:
        with _naming(mask):
            Image.fromarray(prediction.mask.astype(np.uint8) * 255).save(mask, compress_level=PNG_COMPRESS_LEVEL)


@contextmanager
def _naming(path: Path) -> Iterator[None]:
    """An OSError of a write names its file: one raised by a write (a full disk, ``[Errno 27] File too large``),
    unlike one raised by an open, carries no file name."""
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None


def check_output(output: Path) -> None:
    """Raise unless ``bgad predict`` may write into ``output``: a new or empty folder, or an earlier prediction's
    (it holds :data:`PREDICT_MARK`); never a run or model folder, nor a folder of files predict did not write."""
    if output.exists() and not output.is_dir():
        raise BGADError(f"output {output} is a file, not a folder")
    if (output / MODEL_JSON).is_file():
        raise BGADError(f"output {output} is a run or model folder: predict writes its results elsewhere")
    if output.is_dir() and any(output.iterdir()) and not (output / PREDICT_MARK).is_file():
        raise BGADError(
            f"output {output} holds files bgad predict did not write: name a new or empty folder (or an earlier "
            "prediction's, which is written over)"
        )


def predict_folder(
    detector: Detector,
    images: list[Path],
    output: Path,
    *,
    batch_size: int,
    mask_every_image: bool = False,
    maps: str = "all",
    thresholds: Thresholds | None = None,
    problems: list[str],
    progress: bool = True,
) -> list[Scored]:
    """Score ``images`` into ``output`` and return them, in order; unreadable images go to ``problems`` (and to
    stderr as they are met). ``maps`` (one of :data:`MAPS`) says which image files are written beside the scores;
    ``thresholds`` judge them (default: the model's own)."""
    thresholds = thresholds or detector.thresholds_
    if maps not in MAPS:
        raise BGADError(f"maps must be one of {', '.join(MAPS)}, got {maps!r}")
    heatmaps, masks = output / "heatmaps", output / "masks"
    output.mkdir(parents=True, exist_ok=True)
    for folder in (heatmaps, masks)[MAPS.index(maps) :]:
        folder.mkdir(exist_ok=True)
    (output / PREDICT_MARK).write_text("written by bgad predict: a later bgad predict may write over this folder\n")
    names = dict(zip(images, _output_names(images), strict=True))
    batches = [images[start : start + batch_size] for start in range(0, len(images), batch_size)]
    threshold, pixel_threshold = f"{thresholds.image:.6g}", thresholds.pixel
    # A row is written once its image's files are (an interrupted run keeps what it finished), in UTF-8 whatever
    # the locale; file names that are not valid UTF-8 keep their bytes.
    with (
        ThreadPoolExecutor(max_workers=2, thread_name_prefix="bgad-io") as pool,
        open(output / SCORES_CSV, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle,
        progress_bar(total=len(images), desc="predicting", unit="img", disable=not progress) as bar,
    ):
        writer = csv.writer(handle)
        writer.writerow(["path", "score", "normalized_score", "normal_share", "is_anomalous", "image_threshold"])
        finished: list[Scored] = []

        def finish(writing: list[tuple[Future, Path, Prediction]]) -> None:
            for future, image, prediction in writing:
                future.result()
                score, normalized = f"{prediction.score:.6g}", f"{prediction.normalized_score:.4f}"
                share = "" if prediction.normal_share is None else f"{prediction.normal_share:.3g}"
                row = [safe_cell(str(image)), score, normalized, share, int(prediction.is_anomalous), threshold]
                with _naming(output / SCORES_CSV):
                    writer.writerow(row)
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
                    list(readable.values()),
                    batch_size=batch_size,
                    mask_every_image=mask_every_image,
                    thresholds=thresholds,
                )
            except ScoringError as err:
                raise ScoringError(f"{', '.join(map(str, readable))}: {err}") from None
            finish(writing)  # the previous batch: its files were written while this one was scored
            writing = []
            for (image, picture), prediction in zip(readable.items(), predictions, strict=True):
                heatmap = heatmaps / f"{names[image]}.png" if maps == "all" else None
                mask = masks / f"{names[image]}_mask.png" if maps != "none" else None
                future = pool.submit(_write_maps, picture, prediction, pixel_threshold, heatmap, mask)
                writing.append((future, image, prediction))
            bar.update(len(batch))
        finish(writing)
    return finished
