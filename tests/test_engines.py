"""The engine ``bgad predict``/``serve`` use by default, and the one-line errors of an engine that cannot run."""

import csv
import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from bgad import BGAD
from bgad.app.cli import main
from bgad.deploy.engines import FASTEST_FIRST, choose_engine, is_stale_export, load_detector
from bgad.deploy.export import SOURCE_DIGEST, OnnxDetector, read_metadata
from bgad.errors import BGADError
from bgad.storage.model_files import model_digest

from .conftest import assert_one_line

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    """The files :func:`choose_engine` looks at: a model and its export, whose metadata holds the model's digest."""
    onnx = pytest.importorskip("onnx")
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"weights")
    (run / "model.json").write_text("{}")
    exported = onnx.ModelProto(ir_version=10, producer_name="bgad test")
    exported.metadata_props.add(key=SOURCE_DIGEST, value=model_digest(run))
    (run / "model.onnx").write_bytes(exported.SerializeToString())
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
    os.utime(run_folder / "model.safetensors", (5_000, 5_000))  # timestamps do not count: the content is the same
    os.utime(run_folder / "model.onnx", (1_000, 1_000))
    assert not is_stale_export(run_folder)
    (run_folder / "model.json").write_text('{"edited": true}')
    os.utime(run_folder / "model.json", (500, 500))  # copied with its old time (cp -p): still another model
    assert is_stale_export(run_folder)
    engine, why = choose_engine(run_folder)
    assert engine == "torch"
    assert "model.onnx is not an export of the model now in" in why
    with pytest.raises(BGADError, match="run `bgad export --run"):
        load_detector(run_folder, "onnx")
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


@pytest.fixture(scope="module")
def exported_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny run with its export (``bgad export``); tests that change it work on a copy."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    run = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(tiny_run, run)
    assert main(["export", "--run", str(run)]) == 0
    return run


@pytest.mark.slow
def test_auto_uses_the_export_only_while_the_model_files_are_its_own(
    exported_run: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    assert isinstance(load_detector(run), OnnxDetector)
    original = (run / "model.json").read_text()
    description = json.loads(original)
    description["thresholds"]["image"] = 123.0
    (run / "model.json").write_text(json.dumps(description))
    os.utime(run / "model.json", (1_000, 1_000))  # older than the export, as `cp -p` or `rsync -a` leave it
    detector = load_detector(run)
    assert isinstance(detector, BGAD)
    assert detector.thresholds_.image == 123.0
    image = str(tiny_dataset / "part" / "test" / "good" / "000.png")
    assert main(["predict", "--run", str(run), "--engine", "onnx", "--output", str(tmp_path / "o"), image]) == 2
    assert_one_line(capsys, "model.onnx is not an export of the model now in")
    (run / "model.json").write_text(original)
    assert isinstance(load_detector(run), OnnxDetector)  # the same content again, whatever the timestamps


METADATA_EDITS = {
    "thresholds-text": ("thresholds", "xx", "thresholds is not valid JSON"),
    "thresholds-foreign": ("thresholds", '{"foo": 1}', "thresholds must be a mapping of image, pixel"),
    "thresholds-nan": ("thresholds", '{"image": NaN, "pixel": 0.5}', "thresholds must be finite"),
    "thresholds-string": ("thresholds", '{"image": "1", "pixel": 0.5}', "to numbers"),
    "pad-color": ("pad_color", "abc", "pad_color is not valid JSON"),
    "pad-color-range": ("pad_color", "[0, 300, 0]", "pad_color must be 3 integers"),
    "config-truncated": ("config", '{"model": {"image_si', "config is not valid JSON"),
    "config-foreign": ("config", '{"model": {"image_size": "big"}}', "option model.image_size must be int"),
    "scores-nan": ("normal_image_scores", "[0.1, NaN]", "normal_image_scores must be finite"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(METADATA_EDITS))
def test_edited_export_metadata_is_one_line(
    name: str, exported_run: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx = pytest.importorskip("onnx")
    key, value, needle = METADATA_EDITS[name]
    model = onnx.load(str(exported_run / "model.onnx"))
    for entry in model.metadata_props:
        if entry.key == key:
            entry.value = value
    edited = tmp_path / "edited.onnx"
    onnx.save(model, str(edited))
    with pytest.raises(BGADError, match=re.escape(needle)):
        OnnxDetector.load(edited)
    image = str(tiny_dataset / "part" / "test" / "good" / "000.png")
    assert main(["predict", "--run", str(edited), "--output", str(tmp_path / "o"), image, "--quiet"]) == 2
    assert_one_line(capsys, needle)
    assert not (tmp_path / "o").exists()


def test_the_metadata_reader_reads_what_onnx_writes(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.ModelProto(ir_version=10, producer_name="bgad test", doc_string="x" * 300)
    model.graph.name = "g" * 1000  # a field before the metadata, skipped without being decoded
    model.metadata_props.add(key="thresholds", value='{"image": 1.5}')
    model.metadata_props.add(key="naïve", value="é" * 200)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    assert read_metadata(path) == {"thresholds": '{"image": 1.5}', "naïve": "é" * 200}
    path.write_bytes(model.SerializeToString()[:-5])  # truncated
    with pytest.raises(BGADError, match="is not an ONNX file"):
        read_metadata(path)


def engines_benchmark():
    """``benchmarks/engines.py`` as a module (it needs onnxruntime and OpenVINO: the test skips without them)."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    spec = importlib.util.spec_from_file_location("engines_benchmark", BENCHMARKS / "engines.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    return benchmark


def test_the_engines_benchmark_skips_the_int8_rows_without_nncf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    benchmark = engines_benchmark()
    without(monkeypatch, "nncf")
    engines, results = benchmark.int8_engines(tmp_path / "model.onnx", np.zeros((1, 3, 64, 64), np.float32), tmp_path)
    assert engines == []
    assert results == {"int8_quantize_s": None, "int8_backbone_quantize_s": None, "notes": [benchmark.NO_NNCF]}
    assert "the OpenVINO INT8 rows are skipped" in capsys.readouterr().err


@pytest.mark.slow
def test_the_engines_benchmark_runs_the_flows_in_bf16_near_their_float32_maps(tiny_run: Path) -> None:
    benchmark = engines_benchmark()
    size = BGAD.load(tiny_run).model_.config.image_size
    images = np.random.default_rng(0).random((2, 3, size, size), dtype=np.float32)
    float32 = benchmark._torch_engine(tiny_run)(images)
    bf16 = benchmark._torch_engine(tiny_run, flows_bf16=True)(images)
    assert bf16.shape == float32.shape
    assert np.isfinite(bf16).all()
    difference = np.abs(bf16 - float32).max()
    assert 0 < difference < 0.05 * (float32.max() - float32.min())  # reduced precision, the same maps within it
