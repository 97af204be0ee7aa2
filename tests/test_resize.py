"""resize="pad": letterboxed inputs, and pad pixels never reach scores, thresholds or metrics."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from bgad import BGAD, BGADError
from bgad.config import BGADConfig, ModelConfig
from bgad.data.images import (
    content_box,
    content_masks,
    image_to_tensor,
    mask_to_tensor,
    read_image,
    square_mask,
    to_canvas,
)
from bgad.data.samples import Sample
from bgad.evaluation import Evaluation, evaluate
from bgad.inference import predict_images
from bgad.method.features import image_batches
from bgad.method.scoring import calibrate, normality_map
from bgad.method.thresholds import Thresholds, fit_thresholds
from bgad.method.training import vector_labels
from bgad.metrics import aupro, pixel_ap, pixel_auroc
from bgad.storage.model_files import MODEL_JSON

pytestmark = pytest.mark.slow  # trains models end to end

PAD_COLOR = (124, 116, 104)  # EfficientNet-Lite's: the ImageNet mean
PAD = torch.tensor(PAD_COLOR) / 255


def test_content_box_examples() -> None:
    assert content_box(50, 100, 64, "stretch") == (0, 0, 64, 64)
    assert content_box(50, 100, 64, "pad") == (16, 0, 32, 64)
    assert content_box(100, 50, 64, "pad") == (0, 16, 64, 32)
    assert content_box(77, 77, 64, "pad") == (0, 0, 64, 64)
    assert content_box(1, 1000, 64, "pad") == (31, 0, 1, 64)
    with pytest.raises(BGADError, match="unknown resize 'crop'"):
        content_box(10, 10, 64, "crop")


@given(st.integers(1, 3000), st.integers(1, 3000), st.integers(32, 512))
def test_content_box_is_centred_and_keeps_the_aspect_ratio(height: int, width: int, size: int) -> None:
    top, left, box_h, box_w = content_box(height, width, size, "pad")
    assert max(box_h, box_w) == size
    assert abs(top - (size - top - box_h)) <= 1
    assert abs(left - (size - left - box_w)) <= 1
    short, long_ = sorted((height, width))
    exact = short * size / long_
    assert abs(min(box_h, box_w) - exact) <= 0.5 + 1e-9 or (min(box_h, box_w) == 1 and exact < 1)  # a sliver


def test_canvas_is_padded_with_the_pad_colour() -> None:
    image = Image.fromarray(np.full((20, 40, 3), 255, np.uint8))
    canvas = np.asarray(to_canvas(image, 32, "pad", PAD_COLOR))
    assert canvas.shape == (32, 32, 3)
    assert (canvas[8:24] == 255).all()
    assert (canvas[:8] == PAD_COLOR).all()
    assert (canvas[24:] == PAD_COLOR).all()
    tensor = image_to_tensor(image, 32, "pad", PAD_COLOR)
    torch.testing.assert_close(tensor[:, 0, 0], PAD)
    assert image_to_tensor(image, 32).shape == (3, 32, 32)


def test_masks_land_in_the_content_box() -> None:
    mask = np.zeros((20, 40), bool)
    mask[10:20, 30:40] = True  # bottom-right quarter
    canvas = mask_to_tensor(mask, 32, "pad")
    expected = torch.zeros(32, 32, dtype=torch.bool)
    expected[8 + 8 : 8 + 16, 24:32] = True
    torch.testing.assert_close(canvas, expected)
    assert mask_to_tensor(mask, 32).sum() == 32 * 32 // 8  # stretch: an eighth of the square, as of the mask
    square = square_mask(torch.from_numpy(mask), "pad")
    assert square.shape == (40, 40)
    torch.testing.assert_close(square[10:30], torch.from_numpy(mask))
    assert not square[:10].any()
    assert not square[30:].any()
    assert square_mask(torch.from_numpy(mask), "stretch").shape == (20, 40)


def test_training_labels_follow_the_letterbox() -> None:
    mask = torch.zeros(40, 80, dtype=torch.bool)
    mask[30:40, 70:80] = True  # the bottom-right corner of the content
    labels = vector_labels([square_mask(mask, "pad")], (8, 8))[0]  # 10 px cells; content rows 20..60 = cells 2..5
    assert labels.nonzero().tolist() == [[5, 7]]


def test_content_masks() -> None:
    def never_read():
        raise AssertionError("shapes are not needed with stretch")
        yield

    assert content_masks(never_read(), 16, "stretch") is None
    masks = content_masks([(10, 20), (20, 10)], 16, "pad")
    assert masks.shape == (2, 16, 16)
    assert masks[0].sum() == masks[1].sum() == 8 * 16
    assert masks[0, 4:12].all()
    assert masks[1][:, 4:12].all()


def brightness_with_hot_pad(batch: torch.Tensor) -> torch.Tensor:
    """A fake model: brightness as the anomaly map, and pad pixels (exactly the pad colour) scoring 100."""
    is_pad = (batch == PAD[None, :, None, None]).all(dim=1)
    return batch.mean(dim=1) + 100 * is_pad


def test_predictions_crop_the_content_and_return_the_original_size() -> None:
    dark = np.zeros((40, 100, 3), np.uint8)
    spot = dark.copy()
    spot[10:30, 70:90] = 255
    padded = ModelConfig(image_size=32, resize="pad")
    predictions = predict_images(
        brightness_with_hot_pad, [dark, spot], padded, Thresholds(0.5, 0.5), None, 2, fill=PAD_COLOR
    )
    assert [p.anomaly_map.shape for p in predictions] == [(40, 100), (40, 100)]
    assert predictions[0].score < 0.01  # the hot pad is not scored
    assert not predictions[0].is_anomalous
    assert predictions[0].anomaly_map.max() < 0.01
    assert predictions[1].score > 0.9
    assert predictions[1].is_anomalous
    found = predictions[1].mask
    assert found[20, 80]
    assert not found[:, :60].any()
    assert found.sum() > 0.6 * 20 * 20
    stretched = predict_images(
        brightness_with_hot_pad, [dark], ModelConfig(image_size=32), Thresholds(0.5, 0.5), None, 1
    )
    assert stretched[0].anomaly_map.shape == (40, 100)


def pixel_metrics(maps: np.ndarray, masks: np.ndarray, valid: np.ndarray | None = None) -> list[float]:
    return [f(maps, masks, valid=valid) for f in (pixel_auroc, pixel_ap, aupro)]


def test_pixel_metrics_use_only_valid_pixels() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((4, 16, 16))
    masks = np.zeros((4, 16, 16), bool)
    masks[1, 6:9, 3:7] = masks[2, 8:11, 10:14] = masks[3, 5:7, 1:3] = True
    maps[masks] += 0.4
    valid = np.zeros_like(masks)
    valid[:, 4:12] = True
    expected = pixel_metrics(maps[:, 4:12], masks[:, 4:12])
    maps[~valid] = 1e6  # pad pixels: the highest scores of all
    assert pixel_metrics(maps, masks, valid) == pytest.approx(expected, rel=1e-12)  # other shapes: up to rounding
    assert pixel_metrics(maps, masks) != expected
    with pytest.raises(ValueError, match="valid shape"):
        pixel_auroc(maps, masks, valid=valid[:2])


def test_thresholds_use_only_valid_pixels() -> None:
    rng = np.random.default_rng(1)
    normal, known = torch.from_numpy(rng.random((5, 16, 16))), torch.from_numpy(rng.random((3, 16, 16)) + 0.3)
    known_masks = torch.zeros(3, 16, 16, dtype=torch.bool)
    known_masks[:, 6:9, 6:9] = True
    valid = torch.zeros(16, 16, dtype=torch.bool)
    valid[4:12] = True
    config = BGADConfig().threshold
    expected = fit_thresholds(normal[:, 4:12], known[:, 4:12], known_masks[:, 4:12], config)
    normal[:, ~valid], known[:, ~valid] = 1e6, 1e6
    got = fit_thresholds(
        normal, known, known_masks, config, normal_valid=valid.expand(5, -1, -1), anomaly_valid=valid.expand(3, -1, -1)
    )
    assert got == pytest.approx(expected, rel=1e-12)  # quantiles of other shapes: equal up to rounding


def test_calibration_ignores_pad_cells() -> None:
    log_probs = [torch.randn(2, 4, 4), torch.randn(2, 2, 2)]
    valid = torch.zeros(2, 16, 16, dtype=torch.bool)
    valid[:, 4:12] = True  # rows of cells 1..2 of 4 and 0..1 of 2
    log_probs[0][:, [0, 3]] = 50.0  # fully pad cells
    level_max, normal_max = calibrate(log_probs, (16, 16), valid, 1.0)
    assert level_max[0] == log_probs[0][:, 1:3].max()
    assert level_max[1] == log_probs[1].max()
    assert normal_max == normality_map(log_probs, level_max, (16, 16), 1.0)[valid].max()


class HotPadMapper:
    """A fake detector for :func:`evaluate`: letterboxes to 32 px and scores like ``brightness_with_hot_pad``."""

    resize = "pad"

    def anomaly_maps(self, images, *, batch_size: int = 4) -> torch.Tensor:
        batches = image_batches(images, image_size=32, batch_size=batch_size, resize="pad", fill=PAD_COLOR)
        return torch.cat([brightness_with_hot_pad(batch) for batch in batches])


def test_evaluation_scores_and_metrics_ignore_the_pad(tmp_path: Path) -> None:
    samples = []
    for i in range(4):  # two dark good images, two with a white spot (the spot is its own mask)
        image, path, mask_path = np.zeros((64, 128, 3), np.uint8), tmp_path / f"{i}.png", tmp_path / f"{i}_mask.png"
        image[16:48, 16 * i : 64 + 16 * i] = 255 * (i >= 2)
        Image.fromarray(image).save(path)
        Image.fromarray(image[..., 0]).save(mask_path)
        samples.append(Sample(path, "spot", mask_path) if i >= 2 else Sample(path))
    ev = evaluate(HotPadMapper(), samples, progress=False)
    assert ev.resize == "pad"
    np.testing.assert_array_equal(ev.valid, content_masks([(64, 128)] * 4, 32, "pad").numpy())
    assert (ev.scores[:2] < 0.01).all()
    assert (ev.scores[2:] > 0.9).all()
    assert not ev.masks[:, :8].any()
    assert ev.masks[2, 8:16].any()
    metrics = ev.metrics().as_dict()
    assert metrics["image_auroc"] == 1.0
    cropped = Evaluation(ev.samples, ev.scores, ev.anomaly_maps[:, 8:24], ev.masks[:, 8:24]).metrics().as_dict()
    assert metrics == pytest.approx(cropped, rel=1e-12)  # other array shapes: equal up to rounding
    assert metrics["pixel_auroc"] > 0.99


def non_square_copy(source: Path, target: Path, resample: Image.Resampling) -> Path:
    """The 64 px demo image stretched to 96 x 48 (width x height)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.open(source).resize((96, 48), resample).save(target)
    return target


@pytest.fixture(scope="module")
def wide(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    """The tiny demo category with every image and mask stretched to 96 x 48."""
    root, out = tiny_dataset / "part", tmp_path_factory.mktemp("wide")
    lanczos, nearest = Image.Resampling.LANCZOS, Image.Resampling.NEAREST
    normal = [non_square_copy(p, out / "train" / p.name, lanczos) for p in sorted((root / "train/good").glob("*.png"))]
    defects = sorted(p for p in (root / "test").glob("*/*.png") if p.parent.name != "good")
    anomalies = [non_square_copy(p, out / p.parent.name / p.name, lanczos) for p in defects]
    masks = [
        non_square_copy(
            root / "ground_truth" / p.parent.name / f"{p.stem}_mask.png",
            out / "masks" / p.parent.name / p.name,
            nearest,
        )
        for p in defects
    ]
    good = [non_square_copy(p, out / "good" / p.name, lanczos) for p in sorted((root / "test/good").glob("*.png"))]
    return {"normal": normal, "anomalies": anomalies, "masks": masks, "good": good}


@pytest.fixture(scope="module")
def padded(wide: dict[str, list], tiny_config: BGADConfig) -> BGAD:
    config = BGADConfig.from_dict(
        {"model": {"resize": "pad"}, "train": {"meta_epochs": 2, "warmup_meta_epochs": 1}}, base=tiny_config
    )
    known = slice(0, len(wide["anomalies"]), 3)  # one per defect type
    return BGAD(config).fit(wide["normal"], wide["anomalies"][known], wide["masks"][known], progress=False)


def test_fit_and_predict_with_pad_on_non_square_images(padded: BGAD, wide: dict[str, list]) -> None:
    assert padded.resize == "pad"
    assert np.isfinite(padded.thresholds_).all()
    images = wide["good"][:2] + wide["anomalies"][1:3]
    maps = padded.anomaly_maps(images)
    predictions = padded.predict_batch(images)
    for full_map, prediction in zip(maps, predictions, strict=True):
        assert prediction.anomaly_map.shape == (48, 96)
        assert prediction.score == pytest.approx(float(full_map[16:48].max()))  # the content box of 48 x 96 at 64 px
    samples = [Sample(p) for p in wide["good"]] + [
        Sample(p, p.parent.name, m) for p, m in zip(wide["anomalies"], wide["masks"], strict=True)
    ]
    metrics = evaluate(padded, samples, progress=False).metrics().as_dict()
    assert all(np.isfinite(metrics[k]) for k in ("image_auroc", "pixel_auroc", "pixel_aupro"))


def test_resize_is_saved_and_checked_against_the_weights(padded: BGAD, tmp_path: Path) -> None:
    padded.save(tmp_path)
    assert BGAD.load(tmp_path).resize == "pad"
    description = json.loads((tmp_path / MODEL_JSON).read_text())
    del description["config"]["model"]["resize"]  # a model.json that now says "stretch" (the default)
    (tmp_path / MODEL_JSON).write_text(json.dumps(description))
    with pytest.raises(BGADError, match="resize='pad'"):
        BGAD.load(tmp_path)


def test_onnx_agrees_with_torch_under_pad(padded: BGAD, wide: dict[str, list], tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from bgad.deploy.export import OnnxDetector, export_onnx

    onnx_detector = OnnxDetector.load(export_onnx(padded, tmp_path / "model.onnx"))
    assert onnx_detector.resize == "pad"
    images = [read_image(p) for p in wide["good"][:1] + wide["anomalies"][:2]]
    expected, actual = padded.predict_batch(images), onnx_detector.predict_batch(images)
    for e, a in zip(expected, actual, strict=True):
        np.testing.assert_allclose(a.anomaly_map, e.anomaly_map, rtol=0, atol=2e-5)
        assert a.score == pytest.approx(e.score, abs=2e-5)
