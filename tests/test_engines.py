"""The engine ``bgad predict``/``serve`` use by default, and the one-line errors of an engine that cannot run."""

import csv
import os
import shutil
import sys
from pathlib import Path

import pytest

from bgad import BGAD
from bgad.app.cli import main
from bgad.engines import FASTEST_FIRST, choose_engine, load_detector
from bgad.errors import BGADError
from bgad.export import OnnxDetector


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    """The files :func:`choose_engine` looks at: a model and, written after it, its export."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"weights")
    (run / "model.onnx").write_bytes(b"graph")
    os.utime(run / "model.safetensors", (1_000, 1_000))
    return run


def without(monkeypatch: pytest.MonkeyPatch, *packages: str) -> None:
    """Make ``packages`` look uninstalled (find_spec and import both see None in sys.modules)."""
    for package in packages:
        monkeypatch.setitem(sys.modules, package, None)


def test_fastest_installed_runtime_is_chosen_when_the_run_has_its_export(
    run_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert FASTEST_FIRST == ("openvino", "onnx")
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    assert choose_engine(run_folder)[0] == "openvino"
    without(monkeypatch, "openvino")
    assert choose_engine(run_folder)[0] == "onnx"
    without(monkeypatch, "onnxruntime")
    engine, why = choose_engine(run_folder)
    assert engine == "torch"
    assert "neither openvino nor onnxruntime is installed" in why


def test_torch_without_an_export_or_with_a_stale_one_or_on_a_gpu(run_folder: Path) -> None:
    assert choose_engine(run_folder, device="cuda") == ("torch", "device cuda")
    os.utime(run_folder / "model.onnx", (500, 500))  # exported before the model was last written
    engine, why = choose_engine(run_folder)
    assert engine == "torch"
    assert "model.onnx is older than the model" in why
    (run_folder / "model.onnx").unlink()
    engine, why = choose_engine(run_folder)
    assert engine == "torch"
    assert "bgad export --run" in why


def test_an_exported_file_runs_on_the_fastest_runtime_installed(
    run_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    without(monkeypatch, "openvino")
    assert choose_engine(run_folder / "model.onnx")[0] == "onnx"
    without(monkeypatch, "onnxruntime")
    assert choose_engine(run_folder / "model.onnx")[0] == "onnx"  # whose load then names the package to install
    with pytest.raises(BGADError, match=r"pip install 'bgad\[onnx\]'"):
        load_detector(run_folder / "model.onnx")


def test_unknown_engine_and_onnx_on_a_gpu_are_one_line_errors(run_folder: Path) -> None:
    with pytest.raises(BGADError, match="unknown engine 'tensorrt'; use one of auto, torch, onnx, openvino"):
        load_detector(run_folder, "tensorrt")
    with pytest.raises(BGADError, match="the openvino engine runs on the CPU here"):
        load_detector(run_folder, "openvino", device="cuda")


@pytest.mark.slow
def test_predict_picks_openvino_after_export_and_says_so(
    tiny_run: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("onnxscript")
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)  # tiny_run is shared: its export must not change other tests' engine
    image = str(tiny_dataset / "part" / "test" / "crack" / "001.png")
    assert main(["predict", "--run", str(run), "--output", str(tmp_path / "before"), image]) == 0
    assert "bgad: engine torch (no model.onnx in the run;" in capsys.readouterr().err
    assert main(["export", "--run", str(run)]) == 0
    assert isinstance(load_detector(run), OnnxDetector)
    assert load_detector(run).engine == "openvino"
    assert isinstance(load_detector(run, "torch"), BGAD)
    assert main(["predict", "--run", str(run), "--output", str(tmp_path / "after"), image]) == 0
    assert f"bgad: engine openvino ({run / 'model.onnx'})" in capsys.readouterr().err
    with open(tmp_path / "before" / "scores.csv") as before, open(tmp_path / "after" / "scores.csv") as after:
        (torch_row,), (openvino_row,) = csv.DictReader(before), csv.DictReader(after)
    assert float(openvino_row["score"]) == pytest.approx(float(torch_row["score"]), abs=2e-5)
    compiled_onnx = ["--compile", "--engine", "onnx", "--output", str(tmp_path / "x"), image]
    assert main(["predict", "--run", str(run), *compiled_onnx]) == 2
    assert capsys.readouterr().err.strip() == "bgad: error: --compile applies to the torch engine, not onnx"


def test_predict_with_openvino_missing_is_one_line(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    without(monkeypatch, "openvino")
    image = str(tiny_dataset / "part" / "test" / "good" / "000.png")
    onnx_file = tmp_path / "model.onnx"  # absent: the package is checked first
    args = ["predict", "--run", str(onnx_file), "--engine", "openvino", "--output", str(tmp_path / "o"), image]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("bgad: error: the openvino engine needs OpenVINO: pip install 'bgad[openvino]'")
