"""`bgad check` and the checks at the start of `bgad fit`: every problem of a broken dataset, one line each."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bgad.app.cli import main
from bgad.config import TrainConfig
from bgad.data.checks import check_dataset
from bgad.data.layouts import load_folders

from .test_datasets import folder_dataset, folder_options


def _break(root: Path) -> list[str]:
    """Damage a folder dataset in every checked way; return a needle for each expected problem line."""
    (root / "good" / "g03.png").write_bytes(b"not an image")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(root / "masks" / "crack" / "001_label.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "masks" / "crack" / "002_label.png")
    shutil.copy(root / "good" / "g05.png", root / "defects" / "dent" / "copy_of_g05.png")
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(root / "good" / "tiny.png")
    (root / "masks" / "hole" / "000.bmp").unlink()
    return [
        "cannot read image",
        "g03.png",
        "001_label.png is 30x20 but its image",
        "002_label.png of defect image",
        "is empty",
        "the same image is in training and evaluation",
        "tiny.png is 8x8",
        "hole/000.png has no mask",
        "copy_of_g05.png has no mask",
        "20 known anomalies requested but",
    ]


def test_check_reports_a_broken_dataset_completely(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "part")
    needles = _break(root)
    category = load_folders(root / "good", [root / "defects"], [root / "masks"], test_normal_ratio=0.5)
    report = check_dataset(category, TrainConfig(num_anomalies=20), progress=False)
    text = "\n".join(report.problems)
    for needle in needles:
        assert needle in text, f"{needle!r} missing from:\n{text}"
    assert len(report.problems) == 8
    assert not report.ok


def test_check_of_a_clean_dataset(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "part")
    category = load_folders(root / "good", [root / "defects"], [root / "masks"])
    report = check_dataset(category, TrainConfig(num_anomalies=7), progress=False)
    assert report.ok
    assert not report.problems
    assert report.notes == ("no defect images are left for evaluation: metrics will be undefined",)
    assert report.summary() == "part: 8 training normals, 7 known anomalies; evaluation: 2 normals, 0 defects"


def test_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = folder_dataset(tmp_path / "part")
    data = folder_options(root)
    assert main(["check", *data, "--num-anomalies", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "part: 8 training normals, 3 known anomalies; evaluation: 2 normals, 4 defects" in out
    assert "no problems found" in out
    needles = _break(root)
    assert main(["check", *data, "--num-anomalies", "20", "--quiet", "--test-normal-ratio", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "bgad: 8 problem(s) found"
    assert all(line.startswith("bgad: error: ") for line in err[:-1])
    assert len(err) == 9
    for needle in needles:
        assert any(needle in line for line in err), needle


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "no data given"),
        (["--normal-dir", "x", "--manifest", "y"], "give one data source, not --normal-dir and --manifest"),
        (["--defect-dir", "x"], "--defect-dir, --mask-dir and --test-normal-dir need --normal-dir"),
        (["--data-root", "x"], "--data-root and --category go together"),
        (["--manifest", "/nonexistent.csv"], "manifest not found"),
        (["--normal-dir", "/nonexistent"], "normal folder not found"),
    ],
)
def test_data_option_errors(args: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", *args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert needle in err
