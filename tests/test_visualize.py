import matplotlib
import numpy as np

from bgad.app.visualize import heatmap_overlay


def _colour(value: float) -> np.ndarray:
    return np.asarray(matplotlib.colormaps["turbo"](value)[:3]) * 255


def test_threshold_is_mid_scale_and_the_maximum_is_red() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    anomaly_map = np.linspace(0.0, 3.0, 16).reshape(4, 4)
    overlay = heatmap_overlay(image, anomaly_map, threshold=2.0, alpha=1.0).astype(float)
    np.testing.assert_allclose(overlay[3, 3], _colour(1.0), atol=1)  # the maximum, above the threshold
    np.testing.assert_allclose(overlay[0, 0], _colour(0.0), atol=1)  # below the 5th percentile
    at_threshold = heatmap_overlay(image, np.full((4, 4), 2.0), threshold=2.0, alpha=1.0).astype(float)
    np.testing.assert_allclose(at_threshold[0, 0], _colour(0.5), atol=1)


def test_a_map_below_the_threshold_stays_in_the_cool_half() -> None:
    image = np.full((8, 8, 3), 128, np.uint8)
    anomaly_map = np.random.default_rng(0).uniform(0, 1.9, (8, 8))
    overlay = heatmap_overlay(image, anomaly_map, threshold=2.0, alpha=1.0).astype(float)
    hot = _colour(0.75)
    nearest_to_hot = np.min(np.linalg.norm(overlay.reshape(-1, 3) - hot, axis=1))
    assert nearest_to_hot > 30


def test_overlay_equals_matplotlib_colouring_in_row_chunks() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (700, 90, 3), dtype=np.uint8)  # more rows than one chunk
    anomaly_map = rng.normal(size=(700, 90)).astype(np.float32)
    threshold, alpha = 0.8, 0.45
    low, high = float(np.percentile(anomaly_map, 5)), float(anomaly_map.max())
    scaled = np.where(
        anomaly_map < threshold,
        0.5 * (anomaly_map - low) / (threshold - low),
        0.5 + 0.5 * (anomaly_map - threshold) / (high - threshold),
    ).clip(0, 1)
    reference = image * (1 - alpha) + matplotlib.colormaps["turbo"](scaled)[..., :3] * 255 * alpha
    overlay = heatmap_overlay(image, anomaly_map, threshold=threshold, alpha=alpha)
    assert overlay.dtype == np.uint8
    assert np.abs(overlay.astype(int) - reference.round().astype(int)).max() <= 1
