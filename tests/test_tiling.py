"""Tiling large images (model.tile_size): tile geometry, stitching, and a tiled model end to end."""

import csv
import itertools
import json

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from bgad import BGAD, BGADConfig, BGADError
from bgad.app.cli import main
from bgad.data.tiles import core_masks, stitch, tile_grid
from bgad.method.tiling import image_max

from .conftest import fit_command


@given(
    height=st.integers(1, 300),
    width=st.integers(1, 300),
    tile=st.integers(32, 128),
    overlap_share=st.floats(0, 0.49),
)
def test_tile_cores_partition_the_image(height: int, width: int, tile: int, overlap_share: float) -> None:
    overlap = int(tile * overlap_share)
    grid = tile_grid(height, width, tile, overlap)
    owned = np.zeros((height, width), np.int64)
    for t in grid:
        top, left, h, w = t.box
        assert top >= 0
        assert left >= 0
        assert top + h <= height
        assert left + w <= width
        assert (h, w) == (min(tile, height), min(tile, width))
        core_top, core_left, core_h, core_w = t.core
        assert core_h > 0
        assert core_w > 0
        assert core_top + core_h <= h
        assert core_left + core_w <= w
        owned[top + core_top : top + core_top + core_h, left + core_left : left + core_left + core_w] += 1
    assert (owned == 1).all()  # every pixel belongs to exactly one tile's core
    starts = sorted({t.box[0] for t in grid})
    assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))  # overlap at least asked


@given(height=st.integers(40, 200), width=st.integers(40, 200), overlap=st.integers(0, 15))
def test_stitching_gives_back_the_map_the_tiles_were_cut_from(height: int, width: int, overlap: int) -> None:
    full = torch.arange(height * width, dtype=torch.float32).view(height, width)
    grid = tile_grid(height, width, 32, overlap)
    pieces = [full[t.box[0] : t.box[0] + t.box[2], t.box[1] : t.box[1] + t.box[3]] for t in grid]
    assert torch.equal(stitch(pieces, grid, (height, width)), full)
    constant = stitch([torch.full((t.box[2], t.box[3]), 2.5) for t in grid], grid, (height, width))
    assert (constant == 2.5).all()


def test_core_masks_at_the_model_size_are_the_cores() -> None:
    grid = tile_grid(100, 70, 40, 10)
    masks = core_masks(grid, 40)
    for t, mask in zip(grid, masks, strict=True):
        core_top, core_left, core_h, core_w = t.core
        expected = torch.zeros(40, 40, dtype=torch.bool)
        expected[core_top : core_top + core_h, core_left : core_left + core_w] = True
        assert torch.equal(mask, expected)


def test_image_max_groups_tiles_by_image() -> None:
    scores = np.array([0.1, 0.5, 0.3, 0.9, 0.2])
    owner = np.array([0, 0, 1, 1, 2])
    assert image_max(scores, owner).tolist() == [0.5, 0.9, 0.2]
    assert image_max(scores, None) is scores


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    base = 128 + 40 * np.sin(x / 3.0) * np.sin(y / 5.0)
    return np.clip(base[..., None] + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8)


def with_spot(rng: np.random.Generator, size: int, at: tuple[int, int], side: int = 6) -> tuple[np.ndarray, np.ndarray]:
    image, mask = texture(rng, size), np.zeros((size, size), bool)
    image[at[0] : at[0] + side, at[1] : at[1] + side] = 20
    mask[at[0] : at[0] + side, at[1] : at[1] + side] = True
    return image, mask


TILED = {"model": {"image_size": 64, "n_coupling_blocks": 2, "tile_size": 64, "tile_overlap": 16}}


@pytest.fixture(scope="module")
def tiled() -> tuple[BGAD, list[np.ndarray], np.ndarray, np.ndarray]:
    """A tiled model fitted on 320-px texture images, with a test image holding a 6-px spot and its mask."""
    rng = np.random.default_rng(0)
    normals = [texture(rng, 320) for _ in range(3)]
    known = [with_spot(rng, 320, (40, 200)), with_spot(rng, 320, (250, 30))]
    config = BGADConfig.from_dict({**TILED, "train": {"meta_epochs": 3, "fiber_batch": 1024, "extract_batch_size": 8}})
    detector = BGAD(config).fit(normals, [k[0] for k in known], [k[1] for k in known], progress=False)
    spot, mask = with_spot(rng, 320, (150, 160))
    return detector, normals, spot, mask


def test_tiled_model_finds_a_small_defect_at_full_resolution(tiled: tuple) -> None:
    detector, _, spot, mask = tiled
    result = detector.predict(spot)
    assert result.anomaly_map.shape == (320, 320)
    peak = np.unravel_index(result.anomaly_map.argmax(), result.anomaly_map.shape)
    assert abs(peak[0] - 153) <= 6
    assert abs(peak[1] - 163) <= 6
    assert result.is_anomalous
    assert result.mask[mask].any()


def test_tiled_calibration_scores_are_what_inference_gives(tiled: tuple) -> None:
    """Normals are calibrated tile by tile; their stitched predictions must score exactly the same (the fit's own
    normals are calibrated out of fold, so ``calibrate`` on them checks this)."""
    detector, normals, _, _ = tiled
    calibrated = detector.calibrate(normals)
    scores = [p.score for p in calibrated.predict_batch(normals)]
    np.testing.assert_allclose(scores, calibrated.normal_scores_, rtol=1e-5)


def test_tiled_evaluation_maps_keep_the_peak(tiled: tuple) -> None:
    detector, _, spot, _ = tiled
    grid_map = detector.anomaly_maps([spot])[0]
    assert grid_map.shape == (64, 64)
    assert float(grid_map.max()) == pytest.approx(detector.predict(spot).score)


def test_tiled_model_saves_loads_and_exports(tiled: tuple, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from bgad.deploy.export import OnnxDetector, export_onnx

    detector, _, spot, _ = tiled
    detector.save(tmp_path / "model")
    loaded = BGAD.load(tmp_path / "model")
    assert loaded.predict(spot).score == detector.predict(spot).score
    onnx = OnnxDetector.load(export_onnx(detector, tmp_path / "model.onnx"))
    ours, theirs = detector.predict(spot), onnx.predict(spot)
    assert theirs.anomaly_map.shape == ours.anomaly_map.shape
    np.testing.assert_allclose(theirs.anomaly_map, ours.anomaly_map, atol=1e-4)
    assert theirs.is_anomalous == ours.is_anomalous
    np.testing.assert_allclose(onnx.anomaly_maps([spot]).numpy(), detector.anomaly_maps([spot]).numpy(), atol=1e-4)


@pytest.mark.parametrize(
    ("model", "problem"),
    [
        ({"tile_size": 64, "resize": "pad"}, "model.tile_size"),
        ({"tile_size": 64, "tile_overlap": 32}, "model.tile_overlap"),
        ({"tile_size": 16}, "model.tile_size"),
    ],
)
def test_bad_tiling_options_are_named(model: dict, problem: str) -> None:
    with pytest.raises(BGADError, match=problem):
        BGADConfig.from_dict({"model": model})


def test_tiling_refuses_a_foreground_mask_folder(tmp_path) -> None:
    config = BGADConfig.from_dict({**TILED, "train": {"foreground": str(tmp_path)}})
    with pytest.raises(BGADError, match="foreground"):
        BGAD(config).fit([texture(np.random.default_rng(0), 64)], progress=False)


def test_tiled_run_from_the_command_line(tiny_dataset, tiny_config, tmp_path) -> None:
    """fit, test, predict at the original resolution, export and predict with the ONNX engine: a tiled config."""
    pytest.importorskip("onnxruntime")
    config = tiny_config.to_dict()
    config["model"] |= {"tile_size": 40, "tile_overlap": 8}
    config_path = tmp_path / "tiled.yaml"
    config_path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    assert main(fit_command(tiny_dataset, run, config_path)) == 0
    assert json.loads((run / "metrics.json").read_text())["image_auroc"] >= 0
    assert main(["test", "--run", str(run), "--quiet"]) == 0
    image = tmp_path / "incoming" / "large.png"
    image.parent.mkdir()
    Image.open(tiny_dataset / "part" / "test" / "crack" / "000.png").resize((150, 90)).save(image)
    scores = {}
    for engine in ("torch", "onnx"):
        if engine == "onnx":
            assert main(["export", "--run", str(run), "--quiet"]) == 0
        out = tmp_path / engine
        assert (
            main(["predict", "--run", str(run), "--engine", engine, "--output", str(out), str(image), "--quiet"]) == 0
        )
        with Image.open(out / "heatmaps" / "large.png") as heatmap:
            assert heatmap.size == (150, 90)
        with open(out / "scores.csv") as handle:
            scores[engine] = float(next(csv.DictReader(handle))["score"])
    assert scores["onnx"] == pytest.approx(scores["torch"], abs=1e-4)


def test_tiled_recalibration_and_update_keep_scores_consistent(tiled: tuple) -> None:
    """bgad calibrate on a tiled model: its stored normal scores are what inference gives; BGAD.update calibrates
    on every normal it trained on (out of fold, so not what inference gives on them)."""
    detector, normals, spot, mask = tiled
    calibrated = detector.calibrate(normals[1:], target_fpr=0.001)
    scores = [p.score for p in calibrated.predict_batch(normals[1:])]
    np.testing.assert_allclose(scores, calibrated.normal_scores_, rtol=1e-5)
    assert calibrated.thresholds_.image >= max(scores)
    updated = detector.update(normals, [spot], [mask], meta_epochs=1, normal_fraction=1.0, progress=False)
    assert len(updated.normal_scores_) == len(normals)
    assert updated.predict(spot).anomaly_map.shape == (320, 320)
