"""`bgad fit` on plain folders with differently named masks, `bgad test` on them, and interrupt + `--resume`."""

import json
import shutil
from pathlib import Path

import pytest

import bgad.method.training
from bgad.app.cli import main

from .conftest import interrupt_at
from .test_datasets import folder_options

pytestmark = pytest.mark.slow  # trains models end to end


@pytest.fixture(scope="module")
def folders(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The tiny demo category rearranged as a user might have it: good/, defects/<type>/, masks/<type>/*_label.png."""
    root = tmp_path_factory.mktemp("user") / "part"
    source = tiny_dataset / "part"
    (root / "good").mkdir(parents=True)
    for folder in ("train/good", "test/good"):
        for image in (source / folder).iterdir():
            shutil.copy(image, root / "good" / f"{folder.split('/')[0]}_{image.name}")
    for type_dir in (source / "test").iterdir():
        if type_dir.name != "good":
            shutil.copytree(type_dir, root / "defects" / type_dir.name)
            (root / "masks" / type_dir.name).mkdir(parents=True)
            for mask in (source / "ground_truth" / type_dir.name).iterdir():
                shutil.copy(mask, root / "masks" / type_dir.name / mask.name.replace("_mask", "_label"))
    return folder_options(root)


@pytest.fixture(scope="module")
def options(config_file: Path) -> list[str]:
    return ["--config", str(config_file), "--num-anomalies", "3", "--quiet"]


@pytest.fixture(scope="module")
def folder_run(folders: list[str], options: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("runs") / "run"
    assert main(["fit", *folders, "--output", str(output), *options]) == 0
    return output


def _metrics(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("train_seconds")
    return metrics


def test_fit_on_folders_with_one_command(folder_run: Path) -> None:
    run = json.loads((folder_run / "run.json").read_text())
    assert run["dataset"]["layout"] == "folders"
    assert run["category"] == "part"
    metrics = _metrics(folder_run)
    assert metrics["n_known_anomalies"] == 3
    assert metrics["n_eval_images"] == round(0.2 * 16) + 9 - 3  # held-out good + defects - known
    assert 0 <= metrics["pixel_auroc"] <= 1
    assert set(metrics["per_type"]) >= set(run["known_types"])


def test_test_command_reloads_the_folder_dataset(folder_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["test", "--run", str(folder_run), "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = _metrics(folder_run)
    assert printed.pop("per_type").keys() == saved.pop("per_type").keys()
    assert printed.pop("at_thresholds")["image"] == saved.pop("at_thresholds")["image"]
    assert printed.pop("operating_point") == pytest.approx(saved.pop("operating_point"))
    assert printed == pytest.approx(saved)


def test_interrupted_fit_resumes_to_the_same_metrics(
    folder_run: Path,
    folders: list[str],
    options: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(bgad.method.training, "learning_rate", interrupt_at(meta_epoch=2))
        assert main(["fit", *folders, "--output", str(output), *options]) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"bgad: interrupted; finished meta-epochs are saved: continue with `bgad fit --resume {output}`"
    assert not output.exists()
    assert main(["fit", *folders, "--output", str(output), *options]) == 2
    assert "an interrupted fit" in capsys.readouterr().err
    assert main(["fit", "--resume", str(output), "--quiet"]) == 0
    assert _metrics(output) == _metrics(folder_run)
    assert not list(tmp_path.glob(".*")), "the partial folder is gone"
    log = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert [record["meta_epoch"] for record in log] == [0, 1, 2]


def test_resume_errors(tmp_path: Path, folders: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--resume", str(tmp_path / "run"), "--quiet"]) == 2
    assert "no interrupted fit" in capsys.readouterr().err
    assert main(["fit", "--resume", str(tmp_path / "run"), *folders, "--quiet"]) == 2
    assert "--resume takes the data" in capsys.readouterr().err
