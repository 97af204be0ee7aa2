"""A model that cannot score fails closed: damaged or hand-edited model files do not load (one line on every
command), and a score that is not a finite number is an error, never a verdict (docs/reliability.md)."""

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bgad import BGAD
from bgad.app.cli import main
from bgad.app.prediction import predict_folder
from bgad.errors import BGADError
from bgad.storage.model_checks import ScoringError
from bgad.storage.model_files import MODEL_JSON, MODEL_WEIGHTS

from .conftest import assert_one_line

pytestmark = pytest.mark.slow  # trains a model (the session's tiny run)

FIRST_BLOCK = "levels.0.flow.blocks.0"


def _edited_weights(run: Path, folder: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    """A copy of ``run`` whose ``model.safetensors`` went through ``edit`` (its metadata kept)."""
    shutil.copytree(run, folder)
    path = folder / MODEL_WEIGHTS
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata()
    state = load_file(path)
    edit(state)
    save_file(state, path, metadata=metadata)
    return folder


def _set(key: str, value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(state: dict[str, torch.Tensor]) -> None:
        state[key] = state[key].clone()
        state[key].view(-1)[0] = value

    return edit


def _as_int64(key: str) -> Callable[[dict[str, torch.Tensor]], None]:
    return lambda state: state.__setitem__(key, state[key].round().to(torch.int64))


WEIGHT_EDITS = {
    "nan-flow-bias": (_set(f"{FIRST_BLOCK}.subnet.0.bias", math.nan), "not finite"),
    "zero-channel-std": (_set("levels.0.channel_std", 0.0), "must be positive"),
    "nan-normal-max": (_set("normal_max", math.nan), "not finite"),
    "huge-rotation": (_set(f"{FIRST_BLOCK}.rotation", 1e38), "not a rotation"),
    "int64-channel-std": (_as_int64("levels.0.channel_std"), "torch.int64"),
    "overflowing-weight": (lambda s: s[f"{FIRST_BLOCK}.subnet.2.weight"].fill_(3e38), "not finite numbers"),
}


@pytest.mark.parametrize("name", list(WEIGHT_EDITS))
def test_damaged_weights_do_not_load_on_any_command(
    name: str, tiny_run: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit, needle = WEIGHT_EDITS[name]
    run = _edited_weights(tiny_run, tmp_path / "run", edit)
    with pytest.raises(BGADError, match=needle):
        BGAD.load(run)
    image = tiny_dataset / "part" / "test" / "good" / "000.png"
    out, onnx = tmp_path / "out", tmp_path / "model.onnx"
    commands = [
        ["predict", "--run", str(run), "--engine", "torch", "--output", str(out), str(image), "--quiet"],
        ["test", "--run", str(run), "--quiet"],
        ["export", "--run", str(run), "--output", str(onnx)],
        ["calibrate", "--run", str(run), "--normal-dir", str(image.parent), "--output", str(tmp_path / "cal")],
    ]
    for command in commands:
        assert main(command) == 2, command
        assert_one_line(capsys, needle)
    assert not out.exists()
    assert not onnx.exists()


@pytest.mark.parametrize("option", ["score_temperature", "clamp_alpha"])
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_scoring_constants_must_be_finite(
    option: str, value: float, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    description = json.loads((run / MODEL_JSON).read_text())
    description["config"]["model"][option] = value  # json writes Infinity and NaN, and reads them back
    (run / MODEL_JSON).write_text(json.dumps(description))
    with pytest.raises(BGADError, match=f"model.{option}"):
        BGAD.load(run)
    assert main(["predict", "--run", str(run), "--output", str(tmp_path / "out"), str(tmp_path), "--quiet"]) == 2
    assert_one_line(capsys, f"model.{option}")


def _unable_to_score(run: Path) -> BGAD:
    """The run's detector with a NaN calibration constant set in memory (loading would refuse it)."""
    detector = BGAD.load(run)
    detector.model_.normal_max.fill_(math.nan)
    return detector


def test_a_score_that_is_not_finite_is_an_error_not_a_verdict(
    tiny_run: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    detector = _unable_to_score(tiny_run)
    image = tiny_dataset / "part" / "test" / "good" / "000.png"
    with pytest.raises(ScoringError):
        detector.predict(image)
    with pytest.raises(ScoringError, match=r"000\.png"):
        predict_folder(detector, [image], tmp_path / "out", batch_size=2, problems=[], progress=False)


def test_serve_answers_a_score_that_is_not_finite_with_a_500(tiny_run: Path, tiny_dataset: Path) -> None:
    testclient = pytest.importorskip("fastapi.testclient")
    from bgad.app.serve import Scorer, create_app, model_description

    detector = _unable_to_score(tiny_run)
    scorer = Scorer(detector, model_description(tiny_run, detector), max_pixels=1_000_000)
    image = (tiny_dataset / "part" / "test" / "good" / "000.png").read_bytes()
    app = create_app(scorer)
    with testclient.TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as client:
        for path in ("/predict", "/predict/batch"):
            response = client.post(path, files={"file": ("part.png", image, "image/png")})
            assert response.status_code == 500, response.text
            body = response.json()
            assert set(body) == {"error"}
            assert "part.png" in body["error"]
            assert "not a finite number" in body["error"]
        assert client.get("/health").status_code == 200  # the server keeps running
