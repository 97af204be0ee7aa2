import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bgad import BGAD, BGADError, NotFittedError
from bgad.config import BGADConfig, TrainConfig
from bgad.data.layouts import load_mvtec
from bgad.data.samples import make_split
from bgad.storage.model_files import MODEL_JSON, MODEL_WEIGHTS

pytestmark = pytest.mark.slow  # trains models end to end


@pytest.fixture(scope="module")
def fitted(tiny_dataset: Path, tiny_config: BGADConfig) -> tuple[BGAD, list[Path]]:
    category = load_mvtec(tiny_dataset, "part")
    known = make_split(category, TrainConfig(num_anomalies=3, seed=0)).known
    detector = BGAD(tiny_config).fit(
        [s.path for s in category.train], [s.path for s in known], [s.mask_path for s in known], progress=False
    )
    return detector, [s.path for s in category.test]


def test_unfitted_detector_raises() -> None:
    with pytest.raises(NotFittedError, match="not fitted"):
        BGAD().anomaly_maps([np.zeros((8, 8, 3), np.uint8)])


def test_fit_returns_self_with_history(fitted: tuple[BGAD, list[Path]], tiny_config: BGADConfig) -> None:
    detector, _ = fitted
    assert len(detector.history_) == tiny_config.train.meta_epochs
    assert detector.history_[0]["phase"] == "normal-only"
    assert detector.history_[-1]["phase"] == "bg-spp"
    assert all(b is not None for b in detector.history_[-1]["b_n"])
    assert detector.train_seconds_ > 0


def test_scores_do_not_depend_on_the_batch(fitted: tuple[BGAD, list[Path]]) -> None:
    detector, images = fitted
    alone = detector.anomaly_maps(images[:1])
    together = detector.anomaly_maps(images[:5], batch_size=5)
    assert alone.shape == (1, 64, 64)
    torch.testing.assert_close(alone[0], together[0], rtol=1e-4, atol=1e-5)


def test_calibration_puts_the_most_normal_training_pixel_at_zero(
    fitted: tuple[BGAD, list[Path]], tiny_dataset: Path
) -> None:
    """``normal_max`` is the largest normality of the calibration normals' pixels: calibrated on the training
    normals, their anomaly maps are >= 0 with minimum 0. The fit calibrates on their out-of-fold vectors, under which
    they look less normal than in sample: scored by the fitted model, their minimum is then below 0."""
    detector, _ = fitted
    train = [s.path for s in load_mvtec(tiny_dataset, "part").train]
    calibrated = detector.calibrate(train)
    assert float(calibrated.anomaly_maps(train).min()) == pytest.approx(0.0, abs=1e-4)
    assert float(detector.anomaly_maps(train).min()) < -1e-3
    assert all(torch.isfinite(level.log_prob_max) for level in detector.model_.levels)


def test_save_load_round_trip(fitted: tuple[BGAD, list[Path]], tmp_path: Path) -> None:
    detector, images = fitted
    detector.save(tmp_path)
    loaded = BGAD.load(tmp_path)
    torch.testing.assert_close(loaded.anomaly_maps(images[:3]), detector.anomaly_maps(images[:3]), rtol=0, atol=0)
    assert loaded.config == detector.config


def test_same_seed_same_model(tiny_dataset: Path, tiny_config: BGADConfig) -> None:
    category = load_mvtec(tiny_dataset, "part")
    known = make_split(category, TrainConfig(num_anomalies=3, seed=0)).known
    states = []
    for _ in range(2):
        detector = BGAD(tiny_config).fit(
            [s.path for s in category.train[:6]], [s.path for s in known], [s.mask_path for s in known], progress=False
        )
        states.append(detector.model_.state_dict())
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda d: (d / MODEL_WEIGHTS).write_bytes((d / MODEL_WEIGHTS).read_bytes()[:999]),
            "cannot read model weights",
        ),
        (lambda d: (d / MODEL_WEIGHTS).unlink(), "model.safetensors is missing"),
        (lambda d: (d / MODEL_JSON).write_text("{not json"), "not valid JSON"),
        (lambda d: (d / MODEL_JSON).write_text('{"format": "other"}'), "not a bgad model description"),
        (
            lambda d: (d / MODEL_JSON).write_text(
                json.dumps({**json.loads((d / MODEL_JSON).read_text()), "format_version": 99})
            ),
            "model format version 99",
        ),
        (
            lambda d: (d / MODEL_JSON).write_text(
                (d / MODEL_JSON).read_text().replace('"n_coupling_blocks": 2', '"n_coupling_blocks": 3')
            ),
            "do not match",
        ),
    ],
)
def test_damaged_model_files_fail_clearly(fitted: tuple[BGAD, list[Path]], tmp_path: Path, damage, message) -> None:
    detector, _ = fitted
    detector.save(tmp_path)
    damage(tmp_path)
    with pytest.raises(BGADError, match=message):
        BGAD.load(tmp_path)


def test_fit_argument_errors(tiny_config: BGADConfig) -> None:
    with pytest.raises(BGADError, match="at least one normal image"):
        BGAD(tiny_config).fit([])
    with pytest.raises(BGADError, match="1 anomaly images but 0 masks"):
        BGAD(tiny_config).fit([np.zeros((64, 64, 3), np.uint8)], [np.zeros((64, 64, 3), np.uint8)], [])


def test_image_threshold_passes_the_training_normals(fitted: tuple[BGAD, list[Path]], tiny_dataset: Path) -> None:
    detector, _ = fitted
    train = [s.path for s in load_mvtec(tiny_dataset, "part").train]
    scores = detector.anomaly_maps(train).flatten(1).amax(dim=1)
    # 0.99-quantile of the training normals, possibly moved up towards the known anomalies: at most 1 of 12 above.
    assert int((scores > detector.thresholds_.image).sum()) <= 1
    assert detector.thresholds_.pixel > 0


def test_predict_returns_maps_at_the_original_resolution(fitted: tuple[BGAD, list[Path]]) -> None:
    detector, _ = fitted
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (50, 90, 3), dtype=np.uint8)
    result = detector.predict(image)
    assert result.anomaly_map.shape == (50, 90)
    assert result.mask.shape == (50, 90)
    assert result.mask.dtype == bool
    np.testing.assert_array_equal(result.mask, result.anomaly_map > detector.thresholds_.pixel)
    assert result.is_anomalous == (result.score > detector.thresholds_.image)
    gray = detector.predict(image[..., 0])
    assert gray.anomaly_map.shape == (50, 90)


def test_predict_batch_matches_predict(fitted: tuple[BGAD, list[Path]]) -> None:
    detector, images = fitted
    batch = detector.predict_batch(images[:3], batch_size=2)
    single = detector.predict(images[2])
    assert batch[2].score == pytest.approx(single.score, rel=1e-5)
    assert batch[2].anomaly_map.shape == single.anomaly_map.shape


def test_cuda_request_without_gpu_is_a_clear_error(fitted: tuple[BGAD, list[Path]]) -> None:
    detector, _ = fitted
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(BGADError, match="no CUDA GPU"):
        detector.to("cuda")


def test_compiled_flows_give_the_same_maps(fitted: tuple[BGAD, list[Path]], tmp_path: Path) -> None:
    detector, images = fitted
    detector.save(tmp_path)
    compiled = BGAD.load(tmp_path)
    compiled.model_.compile_flows()
    torch.testing.assert_close(compiled.anomaly_maps(images[:2]), detector.anomaly_maps(images[:2]), rtol=0, atol=1e-4)
