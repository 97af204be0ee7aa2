"""A fit never deletes what it does not own, and never throws away a trained model (issue: --overwrite, failures
after training)."""

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

import bgad.app.runs
from bgad import BGAD
from bgad.app.cli import main
from bgad.app.runs import CHECKPOINT, METRICS_JSON, fit_run, is_run_folder, partial_folder, resume_run
from bgad.config import BGADConfig
from bgad.data.layouts import DatasetSpec
from bgad.storage.model_files import MODEL_JSON

from .conftest import assert_one_line, fit_command, snapshot

pytestmark = pytest.mark.slow  # trains models end to end


@pytest.fixture
def data(tiny_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny dataset (root with category 'part')."""
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset / "part", root / "part")
    return root


def _spec(data: Path) -> DatasetSpec:
    return DatasetSpec("mvtec", {"data_root": str(data), "category": "part"})


def test_overwrite_refuses_a_folder_that_is_not_a_run(
    data: Path, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    documents = tmp_path / "Documents"
    (documents / "letters").mkdir(parents=True)
    (documents / "letters" / "thesis.tex").write_text("years of work")
    before = snapshot(documents)
    assert main([*fit_command(data, documents, config_file), "--overwrite"]) == 2
    assert_one_line(capsys, "is not a bgad run")
    assert snapshot(documents) == before
    assert not partial_folder(documents).exists()


@pytest.mark.parametrize("where", ["cwd", "parent of cwd", "home"])
def test_overwrite_refuses_the_working_folder_its_parents_and_home(
    data: Path,
    config_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    where: str,
) -> None:
    work = tmp_path / "work" / "inner"
    work.mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "work"))
    output = {"cwd": ".", "parent of cwd": "..", "home": str(tmp_path / "work")}[where]
    before = snapshot(tmp_path / "work")
    assert main([*fit_command(data, Path(output), config_file), "--overwrite"]) == 2
    assert_one_line(capsys, "current folder, a parent of it or the home folder")
    assert snapshot(tmp_path / "work") == before


def test_overwrite_refuses_a_run_folder_that_holds_the_data(
    data: Path, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(fit_command(data, run, config_file)) == 0
    shutil.move(str(data), str(run / "data"))  # the user keeps the images inside the run folder
    before = snapshot(run)
    capsys.readouterr()
    assert main([*fit_command(run / "data", run, config_file), "--overwrite"]) == 2
    assert_one_line(capsys, "contains the dataset's file")
    assert snapshot(run) == before


def test_overwrite_replaces_a_run_and_leaves_nothing_aside(
    data: Path, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(fit_command(data, run, config_file)) == 0
    (run / "metrics.json").write_text("{}")  # mark the old run
    assert main([*fit_command(data, run, config_file), "--overwrite"]) == 0
    assert json.loads((run / "metrics.json").read_text())  # the new run's metrics
    assert is_run_folder(run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]


def test_a_failed_swap_puts_the_old_run_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output, partial = tmp_path / "run", tmp_path / ".run.partial"
    for folder, text in ((output, "old"), (partial, "new")):
        folder.mkdir()
        for name in ("run.json", MODEL_JSON):
            (folder / name).write_text(text)
    rename = Path.rename

    def failing_rename(self: Path, target: Path) -> Path:
        if self == partial:
            raise OSError(errno.ENOSPC, "No space left on device")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="No space"):
        bgad.app.runs.install_run(partial, output)
    assert (output / "run.json").read_text() == "old"
    assert (partial / "run.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.partial", "run"]


@pytest.mark.parametrize("fault", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_a_failure_after_training_keeps_the_model_and_resume_finishes_without_training(
    data: Path, tiny_config: BGADConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: BaseException
) -> None:
    output = tmp_path / "run"
    evaluate = bgad.app.runs.evaluate

    def failing_evaluate(*args: object, **kwargs: object) -> None:
        raise fault

    with monkeypatch.context() as patch:
        patch.setattr(bgad.app.runs, "evaluate", failing_evaluate)
        expected = bgad.app.runs.TrainingInterrupted if isinstance(fault, KeyboardInterrupt) else bgad.BGADError
        with pytest.raises(expected, match=r"--resume"):
            fit_run(_spec(data), output, tiny_config, progress=False)
    partial = partial_folder(output)
    assert (partial / MODEL_JSON).is_file()
    assert (partial / CHECKPOINT).is_dir()
    assert not output.exists()
    saved = BGAD.load(partial)

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("resume must not train again")

    monkeypatch.setattr(BGAD, "fit", no_training)
    assert bgad.app.runs.evaluate is evaluate
    results = resume_run(output, progress=False)
    assert results.train_seconds == pytest.approx(saved.train_seconds_, abs=0.05)
    assert json.loads((output / METRICS_JSON).read_text())["image_auroc"] == results.metrics.image_auroc
    assert not partial.exists()
    assert not (output / CHECKPOINT).exists()


def test_a_report_that_cannot_be_drawn_does_not_fail_the_fit(
    data: Path,
    tiny_config: BGADConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def broken_report(*args: object, **kwargs: object) -> None:
        raise ValueError("matplotlib could not parse a label")

    monkeypatch.setattr(bgad.app.runs, "write_report", broken_report)
    results = fit_run(_spec(data), tmp_path / "run", tiny_config, progress=False)
    assert "report could not be written" in capsys.readouterr().err
    assert (tmp_path / "run" / METRICS_JSON).is_file()
    assert 0 <= results.metrics.pixel_auroc <= 1


def test_defect_types_with_dollars_and_names_that_are_not_utf8(
    data: Path, tiny_config: BGADConfig, tmp_path: Path
) -> None:
    """Real triggers of failures after training: matplotlib math text and file names that are not valid UTF-8."""
    part = data / "part"
    for old, new in (("crack", "cost_$x_$"), ("spot", os.fsdecode(b"sp\xf6t"))):
        (part / "test" / old).rename(part / "test" / new)
        (part / "ground_truth" / old).rename(part / "ground_truth" / new)
    results = fit_run(_spec(data), tmp_path / "run", tiny_config, progress=False)
    assert {"cost_$x_$", os.fsdecode(b"sp\xf6t")} <= set(results.per_type)
    assert "cost_$x_$" in (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert b"sp\xf6t" in (tmp_path / "run" / "known_anomalies.txt").read_bytes()
