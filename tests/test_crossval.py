"""Training on every label (``--num-anomalies all``) and cross-validation (``bgad fit --cv N``) on small data."""

import json
from pathlib import Path

import pytest

from bgad.app.cli import main

from .conftest import fit_command

pytestmark = pytest.mark.slow


def test_all_anomalies_trains_on_every_defect(
    tiny_dataset: Path, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*fit_command(tiny_dataset, tmp_path / "run", config_file), "--num-anomalies", "all"]) == 0
    captured = capsys.readouterr()
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert len(run["known_anomalies"]) == 9  # every defect of the tiny dataset
    assert "no defect images are left for evaluation" in captured.err
    assert json.loads(captured.out)["n_eval_images"] == 4  # the held-out normals only


def test_cross_validation_folds_cover_every_defect_once(
    tiny_dataset: Path, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cv"
    command = [*fit_command(tiny_dataset, out, config_file), "--cv", "3"]
    assert main(command) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == json.loads((out / "cv.json").read_text())
    assert len(summary["per_fold"]) == 3
    evaluated = []
    for k, fold in enumerate(summary["per_fold"]):
        run = json.loads((out / f"fold{k}" / "run.json").read_text())
        assert run["config"]["train"]["anomaly_sampling"] == f"fold:{k}/3"
        assert fold["n_known_anomalies"] == 6  # 9 defects, 3 held out per fold
        assert fold["n_eval_images"] == 4 + 3
        evaluated.append(set(run["known_anomalies"]))
    every = set.union(*evaluated)
    assert len(every) == 9
    for known in evaluated:  # each defect is held out by exactly one fold
        assert len(every - known) == 3
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro"):
        values = [fold[key] for fold in summary["per_fold"]]
        assert summary["mean"][key] == pytest.approx(sum(values) / 3)
    assert "mean ± std" in (out / "cv.md").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("fold*/model.safetensors")}
    assert main(command) == 0  # the same command again reuses the finished folds
    assert {p: p.stat().st_mtime_ns for p in out.glob("fold*/model.safetensors")} == stamps
