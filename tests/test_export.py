"""ONNX export: the exported graph reproduces the torch model's anomaly maps on real image files."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from bgad import BGAD, BGADError, NotFittedError, __version__
from bgad.config import BGADConfig
from bgad.data.layouts import load_mvtec
from bgad.deploy.export import OnnxDetector, export_onnx
from bgad.method.features import image_batches

from .conftest import SHARED_DATA

pytestmark = pytest.mark.slow  # trains models end to end

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# float32 through the backbone and the flows, torch vs onnxruntime kernels: the measured max |ONNX - torch| was
# 1.4e-6 (synthetic, 64 px), 2.1e-6 (the bottle test below) and 2.9e-6 (bottle, 8 coupling blocks, 9 test images)
# on maps ranging over about [0, 1.9]; scores differed by <= 5e-7. 2e-5 leaves ~7x headroom for other CPUs and
# thread counts and still catches any real mismatch (a wrong op, normalization or calibration constant).
ATOL = 2e-5


@pytest.fixture(scope="module")
def fitted(tiny_dataset: Path, tiny_config: BGADConfig) -> tuple[BGAD, list[Path]]:
    """A detector fitted in ~1 s: one normal-only meta-epoch is enough, the exported graph is the same."""
    category = load_mvtec(tiny_dataset, "part")
    config = BGADConfig.from_dict({"train": {"meta_epochs": 1, "warmup_meta_epochs": 0}}, base=tiny_config)
    detector = BGAD(config).fit([s.path for s in category.train[:6]], progress=False)
    return detector, [s.path for s in category.test]


@pytest.fixture(scope="module")
def exported(fitted: tuple[BGAD, list[Path]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(fitted[0], tmp_path_factory.mktemp("onnx") / "model.onnx")


OPENVINO = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")


@pytest.mark.parametrize("engine", ["onnx", pytest.param("openvino", marks=OPENVINO)])
@pytest.mark.parametrize("batch_size", [1, 5])
def test_onnx_maps_match_torch(fitted: tuple[BGAD, list[Path]], exported: Path, batch_size: int, engine: str) -> None:
    """Both runtimes of the exported file give torch's maps (OpenVINO in float32: its bf16 default would not)."""
    detector, images = fitted
    onnx_detector = OnnxDetector.load(exported, engine=engine)
    assert onnx_detector.engine == engine
    assert onnx_detector.image_size == 64
    assert onnx_detector.thresholds_ == detector.thresholds_
    expected = detector.anomaly_maps(images[:5], batch_size=batch_size)
    actual = onnx_detector.anomaly_maps(images[:5], batch_size=batch_size)
    assert actual.shape == expected.shape == (5, 64, 64)
    assert expected.abs().max() > 0.5  # maps of order 1, so ATOL is a tight bound
    torch.testing.assert_close(actual, expected, rtol=0, atol=ATOL)


def test_scores_are_map_maxima_and_metadata_is_stored(fitted: tuple[BGAD, list[Path]], exported: Path) -> None:
    import onnxruntime

    detector, images = fitted
    onnx_detector = OnnxDetector.load(exported)
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, 64, 64]
    batch = next(image_batches(images[:3], image_size=64, batch_size=3))
    maps, scores = session.run(None, {"images": batch.numpy()})
    assert scores.shape == (3,)
    torch.testing.assert_close(torch.from_numpy(scores), torch.from_numpy(maps).flatten(1).amax(dim=1), rtol=0, atol=0)
    meta = onnx_detector.metadata
    assert meta["bgad_version"] == __version__
    assert meta["image_size"] == "64"
    assert BGADConfig.from_dict(json.loads(meta["config"])) == detector.config
    assert json.loads(meta["thresholds"]) == detector.thresholds_._asdict()


def test_unfitted_detector_cannot_be_exported(tmp_path: Path) -> None:
    with pytest.raises(NotFittedError, match="not fitted"):
        export_onnx(BGAD(), tmp_path / "model.onnx")


def test_missing_onnx_packages_give_an_install_hint(
    fitted: tuple[BGAD, list[Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BGADError, match=r"pip install 'bgad\[onnx\]'"):
        export_onnx(fitted[0], tmp_path / "model.onnx")
    with pytest.raises(BGADError, match=r"pip install 'bgad\[onnx\]'"):
        OnnxDetector.load(tmp_path / "model.onnx")


def test_missing_openvino_gives_an_install_hint(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(BGADError, match=r"^the openvino engine needs OpenVINO: pip install 'bgad\[openvino\]'"):
        OnnxDetector.load(exported, engine="openvino")


@pytest.mark.parametrize("engine", ["onnx", pytest.param("openvino", marks=OPENVINO)])
def test_missing_or_corrupt_onnx_file_fails_clearly(exported: Path, tmp_path: Path, engine: str) -> None:
    with pytest.raises(BGADError, match="not found"):
        OnnxDetector.load(tmp_path / "absent.onnx", engine=engine)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(exported.read_bytes()[:999])
    with pytest.raises(BGADError, match="cannot load ONNX model"):
        OnnxDetector.load(truncated, engine=engine)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_text("not a model")
    with pytest.raises(BGADError, match="cannot load ONNX model"):
        OnnxDetector.load(garbage, engine=engine)


@pytest.mark.skipif(not (SHARED_DATA / "bottle").is_dir(), reason="MVTec AD bottle not in ../shared")
def test_onnx_matches_torch_on_real_bottle_images(tmp_path: Path) -> None:
    category = load_mvtec(SHARED_DATA, "bottle")
    config = BGADConfig.from_dict(
        {
            "model": {"image_size": 128, "n_coupling_blocks": 2},
            "train": {"meta_epochs": 1, "normal_only_meta_epochs": 1, "warmup_meta_epochs": 0, "fiber_batch": 1024},
        }
    )
    detector = BGAD(config).fit([s.path for s in category.train[:4]], progress=False)
    good = [s.path for s in category.test if not s.is_anomalous][:1]
    defects = [s.path for s in category.test if s.is_anomalous][::20][:2]
    onnx_detector = OnnxDetector.load(export_onnx(detector, tmp_path / "bottle.onnx"))
    expected = detector.anomaly_maps(good + defects, batch_size=3)
    actual = onnx_detector.anomaly_maps(good + defects, batch_size=3)
    assert actual.shape == (3, 128, 128)
    # log-scale maps reach tens on these defects (4 training images): float32 rounding is relative there
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=ATOL)
