"""Progress in a log file: whole lines, no carriage returns (stderr is not a terminal under pytest)."""

import re
from pathlib import Path

import pytest

from bgad.app.cli import main
from bgad.runtime.progress import LineProgress, log_line, progress

from .conftest import fit_command


def test_a_log_file_gets_one_line_per_stage_and_per_log_call(capsys: pytest.CaptureFixture[str]) -> None:
    with progress(total=3, desc="stage", unit="img") as bar:
        assert isinstance(bar, LineProgress)
        for _ in range(3):
            bar.update()
        log_line(bar, "half way")
        bar.set_postfix(loss="0.5")
    assert list(progress(range(4), desc="loop")) == [0, 1, 2, 3]
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0] == "bgad: stage: half way"
    assert re.fullmatch(r"bgad: stage: 3/3 img in \d+\.\d s \(loss=0\.5\)", lines[1])
    assert re.fullmatch(r"bgad: loop: 4/4 it in \d+\.\d s", lines[2])
    assert len(lines) == 3


def test_disabled_progress_writes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    for _ in progress(range(3), desc="quiet", disable=True):
        pass
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_a_fit_logged_to_a_file_has_a_line_per_meta_epoch(
    tiny_dataset: Path, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command = [arg for arg in fit_command(tiny_dataset, tmp_path / "run", config_file) if arg != "--quiet"]
    assert main(command) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert [line for line in err.splitlines() if "meta-epoch" in line][-1].startswith(
        "bgad: training flows: meta-epoch 3/3 (bg-spp)"
    )
    assert len(err.splitlines()) < 30
