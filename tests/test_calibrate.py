"""Thresholds the user controls at inference, and ``bgad calibrate``, end to end on a tiny run."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bgad import BGAD
from bgad.app.cli import main
from bgad.method.thresholds import NormalTail

from .conftest import assert_one_line, snapshot

pytestmark = pytest.mark.slow


def _scores(folder: Path) -> list[dict[str, str]]:
    with open(folder / "scores.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _predict(run: Path, out: Path, images: Path, *options: str) -> list[dict[str, str]]:
    assert main(["predict", "--run", str(run), "--output", str(out), str(images), "--quiet", *options]) == 0
    return _scores(out)


def test_threshold_options_change_the_verdicts(tiny_run: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    images = tiny_dataset / "part" / "test"
    default = _predict(tiny_run, tmp_path / "default", images)
    assert set(default[0]) == {"path", "score", "normalized_score", "normal_share", "is_anomalous", "image_threshold"}
    threshold = BGAD.load(tiny_run).thresholds_.image
    for row in default:
        assert float(row["image_threshold"]) == pytest.approx(threshold, rel=1e-5)
        assert (
            (float(row["normalized_score"]) > 0.5) == (row["is_anomalous"] == "1") == (float(row["score"]) > threshold)
        )
    scores = sorted(float(r["score"]) for r in default)
    middle = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
    halved = _predict(tiny_run, tmp_path / "middle", images, "--image-threshold", str(middle))
    assert sum(r["is_anomalous"] == "1" for r in halved) == len(scores) - len(scores) // 2
    nothing = _predict(tiny_run, tmp_path / "none", images, f"--image-threshold={scores[-1] + 1}")
    assert not any(r["is_anomalous"] == "1" for r in nothing)
    for mask in (tmp_path / "none" / "masks").iterdir():  # every image judged good: every mask empty
        assert not np.asarray(Image.open(mask)).any()
    every = tmp_path / "every"
    above_all = f"--image-threshold={scores[-1] + 1}"
    _predict(tiny_run, every, images, above_all, "--pixel-threshold=-1e9", "--mask-every-image")
    assert all(np.asarray(Image.open(mask)).all() for mask in (every / "masks").iterdir())


def test_target_fpr_uses_the_stored_normal_scores(tiny_run: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    normal_scores = np.array(json.loads((tiny_run / "model.json").read_text())["normal_image_scores"])
    assert len(normal_scores) == 12  # the training normals of the tiny dataset
    rows = _predict(tiny_run, tmp_path / "fpr", tiny_dataset / "part" / "train" / "good", "--target-fpr", "0.25")
    tail = NormalTail(normal_scores)  # the 12 normals' out-of-fold scores: a quarter of good parts score above
    for row in rows:
        assert float(row["image_threshold"]) == pytest.approx(tail.score_at(0.25), rel=1e-5)
        assert float(row["normal_share"]) == pytest.approx(tail.share(float(row["score"])), rel=1e-2)


def test_calibrate_writes_a_new_model_and_leaves_the_run(
    tiny_run: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    part = tiny_dataset / "part"
    defects, masks = tmp_path / "defects", tmp_path / "masks"
    shutil.copytree(part / "test" / "crack", defects)
    masks.mkdir()
    for mask in (part / "ground_truth" / "crack").iterdir():
        shutil.copy(mask, masks / mask.name)
    before = snapshot(tiny_run)
    out = tmp_path / "calibrated"
    args = ["calibrate", "--run", str(tiny_run), "--normal-dir", str(part / "test" / "good"), "--output", str(out)]
    capsys.readouterr()
    assert main([*args, "--defect-dir", str(defects), "--mask-dir", str(masks), "--target-fpr", "0.25"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert snapshot(tiny_run) == before
    assert (summary["n_normal_images"], summary["n_defect_images"]) == (4, 3)
    assert summary["normal_flagged_fraction"] <= 0.25
    calibrated = BGAD.load(out)
    assert calibrated.thresholds_._asdict() == pytest.approx(summary["thresholds"])
    assert len(calibrated.normal_scores_) == 4
    assert json.loads((out / "calibration.json").read_text()) == summary
    rows = _predict(out, tmp_path / "pred", part / "test" / "good")  # the model folder works like a run
    assert sum(r["is_anomalous"] == "1" for r in rows) <= 1
    # the flows are the original ones: only the calibration constants and thresholds change
    original = BGAD.load(tiny_run).model_.state_dict()
    for name, tensor in calibrated.model_.state_dict().items():
        if "flow" in name:
            assert tensor.equal(original[name]), name


def test_calibrate_refuses_to_overwrite(tiny_run: Path, tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    normals = str(tiny_dataset / "part" / "test" / "good")
    assert main(["calibrate", "--run", str(tiny_run), "--normal-dir", normals, "--output", str(tiny_run)]) == 2
    assert_one_line(capsys, "is the run itself")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert main(["calibrate", "--run", str(tiny_run), "--normal-dir", normals, "--output", str(taken)]) == 2
    assert_one_line(capsys, "not empty")
    assert (taken / "notes.txt").read_text() == "mine"
    missing = str(tmp_path / "nowhere")
    assert main(["calibrate", "--run", str(tiny_run), "--normal-dir", missing, "--output", str(tmp_path / "x")]) == 2
    assert_one_line(capsys, "nowhere")
    assert not (tmp_path / "x").exists()


def test_test_writes_its_report_elsewhere_and_never_into_the_run(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(tiny_run)
    assert main(["test", "--run", str(tiny_run), "--quiet"]) == 0
    assert snapshot(tiny_run) == before  # no --output: only printed
    out = tmp_path / "test"
    capsys.readouterr()
    assert main(["test", "--run", str(tiny_run), "--output", str(out), "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads((out / "metrics.json").read_text()) == printed
    assert "Decisions at the model's thresholds" in (out / "report.html").read_text()
    assert main(["test", "--run", str(tiny_run), "--output", str(out), "--quiet"]) == 0  # over an earlier test
    assert snapshot(tiny_run) == before
    capsys.readouterr()
    assert main(["test", "--run", str(tiny_run), "--output", str(tiny_run), "--quiet"]) == 2
    assert_one_line(capsys, "is a run folder")
    assert snapshot(tiny_run) == before
