"""``bgad predict --review N``: the images worth a human look, to decide what to label next.

Two kinds, in ``review.csv`` and on a contact sheet (``review.png``):

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

from ..thresholds import Thresholds

REVIEW_CSV, REVIEW_SHEET = "review.csv", "review.png"
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
    reason: str  # "near threshold" or "hidden region"
    distance: float  # near threshold: |score / threshold - 1|; hidden region: how far the peak is above the pixel


def review_queue(scored: Sequence[Scored], thresholds: Thresholds, n: int) -> list[ReviewItem]:
    """The review list (see the module docstring): near-threshold images first, then hidden regions not already
    listed."""
    scale = abs(thresholds.image) or 1.0
    near = sorted(scored, key=lambda s: abs(s.score - thresholds.image) / scale)[:n]
    items = [ReviewItem(s, "near threshold", abs(s.score - thresholds.image) / scale) for s in near]
    listed = {s.path for s in near}
    hidden = [s for s in scored if not s.is_anomalous and s.map_peak > thresholds.pixel and s.path not in listed]
    hidden.sort(key=lambda s: s.map_peak, reverse=True)
    items += [ReviewItem(s, "hidden region", s.map_peak - thresholds.pixel) for s in hidden[:n]]
    return items


def write_review(output: Path, items: Sequence[ReviewItem]) -> None:
    """``review.csv`` (rank, path, score, normalized score, verdict, reason, distance) and ``review.png``."""
    with open(output / REVIEW_CSV, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "path", "score", "normalized_score", "is_anomalous", "reason", "distance"])
        for rank, item in enumerate(items, start=1):
            s = item.image
            row = [rank, str(s.path), f"{s.score:.6g}", f"{s.normalized_score:.4f}", int(s.is_anomalous)]
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
