"""Faults injected at every write point of fit, resume, predict and export (a full disk, Ctrl-C, a killed process).

After each fault: the message is one line, no file outside the run folder changed (the data, an earlier run),
and the partial folder is either absent or resumable. docs/reliability.md lists the outcomes.
"""

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from PIL import Image

import bgad.app.runs
import bgad.deploy.export
import bgad.storage.checkpoint
import bgad.storage.model_files
from bgad.app.cli import main
from bgad.app.runs import CHECKPOINT, is_run_folder, partial_folder
from bgad.config import BGADConfig
from bgad.storage.checkpoint import STATE_JSON

from .conftest import fit_command, snapshot

pytestmark = pytest.mark.slow  # trains models end to end

DISK_FULL = OSError(errno.ENOSPC, "No space left on device")


def _fails_on_call(target: Callable, call: int, fault: BaseException) -> Callable:
    """``target`` that raises ``fault`` on its ``call``-th call (1-based), and works otherwise."""
    calls = {"n": 0}

    def wrapper(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == call:
            raise fault
        return target(*args, **kwargs)

    return wrapper


# (module, attribute, call): every place a fit writes to disk, in the order it writes.
FIT_WRITE_POINTS = {
    "run.json": (bgad.app.runs, "write_run", 1),
    "first checkpoint": (bgad.storage.checkpoint, "write_atomic", 1),
    "later checkpoint": (bgad.storage.checkpoint, "write_atomic", 2),
    "model weights": (bgad.storage.model_files, "save_file", 1),
    "metrics.json": (bgad.app.runs, "write_json", 1),
    "install": (bgad.app.runs, "install_run", 1),
}


@pytest.mark.parametrize("fault", [DISK_FULL, KeyboardInterrupt()], ids=["disk-full", "ctrl-c"])
@pytest.mark.parametrize("point", list(FIT_WRITE_POINTS))
def test_a_fault_while_fitting_over_an_earlier_run(
    point: str,
    fault: BaseException,
    tiny_dataset: Path,
    config_file: Path,
    tiny_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset / "part", data / "part")
    output = tmp_path / "run"
    shutil.copytree(tiny_run, output)
    before_data, before_run = snapshot(data), snapshot(output)
    module, name, call = FIT_WRITE_POINTS[point]
    with monkeypatch.context() as patch:
        patch.setattr(module, name, _fails_on_call(getattr(module, name), call, fault))
        code = main(fit_command(data, output, config_file, "--overwrite"))
    err = capsys.readouterr().err.strip()
    assert code == (130 if isinstance(fault, KeyboardInterrupt) else 2)
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert snapshot(data) == before_data
    assert snapshot(output) == before_run  # the earlier run is untouched until the new one is complete
    partial = partial_folder(output)
    assert {p.name for p in tmp_path.iterdir()} <= {"data", "run", partial.name}
    if partial.exists():
        assert (partial / CHECKPOINT / STATE_JSON).is_file()
        assert "--resume" in err
        assert main(["fit", "--resume", str(output), "--quiet"]) == 0
        assert is_run_folder(output)
        assert not partial.exists()
        assert snapshot(data) == before_data
    else:
        assert point in ("run.json", "first checkpoint")  # nothing trained yet: nothing kept


@pytest.mark.parametrize("fault", [DISK_FULL, KeyboardInterrupt()], ids=["disk-full", "ctrl-c"])
def test_a_fault_while_predicting(
    fault: BaseException,
    tiny_run: Path,
    tiny_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    images = tmp_path / "images"
    shutil.copytree(tiny_dataset / "part" / "test" / "good", images)
    before_images, before_run = snapshot(images), snapshot(tiny_run)
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(Image.Image, "save", _fails_on_call(Image.Image.save, 3, fault))  # 2 files per image
        code = main(["predict", "--run", str(tiny_run), "--output", str(out), str(images), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == (130 if isinstance(fault, KeyboardInterrupt) else 2)
    assert len(err.splitlines()) == 1, err
    assert snapshot(images) == before_images
    assert snapshot(tiny_run) == before_run
    rows = (out / "scores.csv").read_text(encoding="utf-8").splitlines()[1:]
    # Files are written by two threads, so which image the failing call belongs to depends on their timing; either
    # way scores.csv lists, in order, only images whose heatmap and mask were both written, and stops there.
    assert len(rows) < len(list(images.iterdir()))
    for row, image in zip(rows, sorted(images.iterdir()), strict=False):
        assert row.startswith(f"{image},")
        assert (out / "heatmaps" / f"{image.stem}.png").is_file()
        assert (out / "masks" / f"{image.stem}_mask.png").is_file()


@pytest.mark.parametrize("fault", [DISK_FULL, KeyboardInterrupt()], ids=["disk-full", "ctrl-c"])
def test_a_fault_while_exporting_keeps_the_earlier_file(
    fault: BaseException,
    tiny_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"an earlier export")
    with monkeypatch.context() as patch:
        patch.setattr(bgad.deploy.export.os, "replace", _fails_on_call(os.replace, 1, fault))
        code = main(["export", "--run", str(tiny_run), "--output", str(target)])
    err = capsys.readouterr().err.strip()
    assert code == (130 if isinstance(fault, KeyboardInterrupt) else 2)
    assert len(err.splitlines()) == 1, err
    assert target.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no partial file left


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_a_killed_fit_resumes(tiny_dataset: Path, tiny_config: BGADConfig, tmp_path: Path) -> None:
    longer = BGADConfig.from_dict({"train": {"meta_epochs": 6}}, base=tiny_config)
    config_file = tmp_path / "long.yaml"
    config_file.write_text(yaml.safe_dump(longer.to_dict()))
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset / "part", data / "part")
    before = snapshot(data)
    output = tmp_path / "run"
    state = partial_folder(output) / CHECKPOINT / STATE_JSON
    process = subprocess.Popen([sys.executable, "-m", "bgad.app.cli", *fit_command(data, output, config_file)])
    deadline = time.monotonic() + 120
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert state.is_file(), "the fit ended before its first checkpoint could be killed"
    assert not output.exists()
    assert main(["fit", "--resume", str(output), "--quiet"]) == 0
    assert is_run_folder(output)
    assert snapshot(data) == before
