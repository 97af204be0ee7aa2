"""``bgad predict --review N`` and the review list of ``bgad serve``'s page: the images worth a human look, to
decide what to label next.

Two kinds, in ``review.csv`` and on a contact sheet (``review.png``), or in the page's list:

- **near the threshold**: the N images whose score is closest to the image threshold (relative distance
  ``|score / threshold - 1|``), on either side: the model is least sure of them;
- **hidden region**: images judged good whose anomaly map still rises above the pixel threshold somewhere; their
  mask was left empty by the verdict, so only a look tells whether a small defect was missed (at most N of them,
  the highest peaks first).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from ..method.thresholds import Thresholds
from .csv_cells import safe_cell

REVIEW_CSV, REVIEW_SHEET = "review.csv", "review.png"
NEAR, HIDDEN = "near threshold", "hidden region"
THUMBNAIL = 224  # pixels, the long side of each image on the contact sheet
COLUMNS = 4


@dataclass(frozen=True)
class Scored:
    """One predicted image, as the review needs it."""

    path: Path
    heatmap: Path  # the overlay bgad predict wrote
    score: float
    normalized_score: float
    is_anomalous: bool
    map_peak: float  # the largest anomaly-map value (at the image's resolution)


@dataclass(frozen=True)
class ReviewItem:
    image: Scored
    reason: str  # NEAR or HIDDEN
    distance: float  # near threshold: |score / threshold - 1|; hidden region: how far the peak is above the pixel


def review_order(
    scores: Sequence[float], peaks: Sequence[float], thresholds: Thresholds, n: int
) -> list[tuple[int, str, float]]:
    """The review list (see the module docstring) of images given by their score and their map's peak, as
    ``(index, reason, distance)``: near-threshold images first, then hidden regions not already listed. An image
    is judged anomalous when its score is above the image threshold; ties keep the input order."""
    scale = abs(thresholds.image) or 1.0
    distance = [abs(score - thresholds.image) / scale for score in scores]
    near = sorted(range(len(scores)), key=distance.__getitem__)[:n]
    hidden = [
        i for i in range(len(scores)) if scores[i] <= thresholds.image and peaks[i] > thresholds.pixel and i not in near
    ]
    hidden.sort(key=peaks.__getitem__, reverse=True)
    return [(i, NEAR, distance[i]) for i in near] + [(i, HIDDEN, peaks[i] - thresholds.pixel) for i in hidden[:n]]


def review_queue(scored: Sequence[Scored], thresholds: Thresholds, n: int) -> list[ReviewItem]:
    """:func:`review_order` of predicted images."""
    order = review_order([s.score for s in scored], [s.map_peak for s in scored], thresholds, n)
    return [ReviewItem(scored[i], reason, distance) for i, reason, distance in order]


def write_review(output: Path, items: Sequence[ReviewItem]) -> None:
    """``review.csv`` (rank, path, score, normalized score, verdict, reason, distance) and ``review.png``."""
    with open(output / REVIEW_CSV, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "path", "score", "normalized_score", "is_anomalous", "reason", "distance"])
        for rank, item in enumerate(items, start=1):
            s = item.image
            row = [rank, safe_cell(str(s.path)), f"{s.score:.6g}", f"{s.normalized_score:.4f}", int(s.is_anomalous)]
            writer.writerow([*row, item.reason, f"{item.distance:.4g}"])
    _contact_sheet(items).save(output / REVIEW_SHEET)


def _contact_sheet(items: Sequence[ReviewItem]) -> Image.Image:
    caption_height = 34
    rows = max(1, -(-len(items) // COLUMNS))
    sheet = Image.new("RGB", (COLUMNS * THUMBNAIL, rows * (THUMBNAIL + caption_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for index, item in enumerate(items):
        left, top = (index % COLUMNS) * THUMBNAIL, (index // COLUMNS) * (THUMBNAIL + caption_height)
        with Image.open(item.image.heatmap) as heatmap:
            thumbnail = heatmap.convert("RGB")
        thumbnail.thumbnail((THUMBNAIL, THUMBNAIL))
        sheet.paste(thumbnail, (left + (THUMBNAIL - thumbnail.width) // 2, top))
        verdict = "anomalous" if item.image.is_anomalous else "good"
        name = f"{item.image.path.parent.name}/{item.image.path.name}"[-30:]
        text = f"{index + 1}. {name}\n{item.reason}, {verdict}, {item.image.normalized_score:.2f}"
        draw.text((left + 4, top + THUMBNAIL + 2), text, fill=(31, 41, 51))
    return sheet
