"""Heatmap overlays for people: anomaly maps drawn over their images, the pixel threshold at mid-scale."""

from __future__ import annotations

import matplotlib
import numpy as np


def heatmap_overlay(image: np.ndarray, anomaly_map: np.ndarray, *, threshold: float, alpha: float = 0.45) -> np.ndarray:
    """Blend a "turbo" heatmap of ``anomaly_map`` (H, W) over ``image`` (H, W, 3) uint8.

    The colour scale is piecewise linear with the pixel ``threshold`` at its middle (green-yellow): below it, from
    the map's 5th percentile (blue); above it, up to the map's maximum (red). Everything below the threshold stays
    in the cool half, so a good part never looks hot, and a defect always reaches red.
    """
    eps = 1e-6
    low = min(float(np.percentile(anomaly_map, 5)), threshold - eps)
    high = max(float(anomaly_map.max()), threshold + eps)
    below = 0.5 * (anomaly_map - low) / (threshold - low)
    above = 0.5 + 0.5 * (anomaly_map - threshold) / (high - threshold)
    scaled = np.clip(np.where(anomaly_map < threshold, below, above), 0, 1)
    colours = matplotlib.colormaps["turbo"](scaled)[..., :3] * 255
    return (image * (1 - alpha) + colours * alpha).round().astype(np.uint8)
