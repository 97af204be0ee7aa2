"""``bgad predict --review N``: which images are listed, in which order, and the files written."""

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bgad.app.cli import main
from bgad.app.review import COLUMNS, THUMBNAIL, Scored, review_queue, write_review
from bgad.method.thresholds import Thresholds


def _scored(tmp_path: Path, name: str, score: float, peak: float, threshold: float = 1.0) -> Scored:
    heatmap = tmp_path / f"{name}.png"
    Image.fromarray(np.full((30, 50, 3), 128, np.uint8)).save(heatmap)
    return Scored(tmp_path / f"{name}.jpg", heatmap, score, score / (2 * threshold), score > threshold, peak)


def test_the_queue_lists_the_nearest_then_the_hidden_regions(tmp_path: Path) -> None:
    images = [
        _scored(tmp_path, "far_good", 0.2, 0.3),
        _scored(tmp_path, "just_below", 0.95, 0.9),
        _scored(tmp_path, "just_above", 1.08, 1.5),
        _scored(tmp_path, "far_bad", 3.0, 3.0),
        _scored(tmp_path, "hidden", 0.5, 1.4),  # judged good, but a region above the pixel threshold 1.2
        _scored(tmp_path, "hidden_more", 0.4, 1.9),
    ]
    queue = review_queue(images, Thresholds(image=1.0, pixel=1.2), 2)
    assert [(item.image.path.stem, item.reason) for item in queue] == [
        ("just_below", "near threshold"),
        ("just_above", "near threshold"),
        ("hidden_more", "hidden region"),
        ("hidden", "hidden region"),
    ]
    assert queue[0].distance == pytest.approx(0.05)
    write_review(tmp_path, queue)
    with open(tmp_path / "review.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["rank"] for row in rows] == ["1", "2", "3", "4"]
    assert rows[2]["reason"] == "hidden region"
    with Image.open(tmp_path / "review.png") as sheet:
        assert sheet.width == COLUMNS * THUMBNAIL
        assert sheet.height > THUMBNAIL


@pytest.mark.slow
def test_predict_review_writes_the_queue(tiny_run: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    images = str(tiny_dataset / "part" / "test")
    assert main(["predict", "--run", str(tiny_run), "--output", str(out), images, "--review", "3", "--quiet"]) == 0
    with open(out / "review.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    near = [row for row in rows if row["reason"] == "near threshold"]
    assert len(near) == 3
    assert [float(r["distance"]) for r in near] == sorted(float(r["distance"]) for r in near)
    with open(out / "scores.csv", encoding="utf-8") as handle:
        scores = list(csv.DictReader(handle))
    threshold = float(scores[0]["image_threshold"])
    closest = sorted(abs(float(r["score"]) / threshold - 1) for r in scores)[:3]
    assert [float(r["distance"]) for r in near] == pytest.approx(closest, rel=1e-3)
    assert (out / "review.png").is_file()
