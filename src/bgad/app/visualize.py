"""Heatmap overlays for people: anomaly maps drawn over their images, the pixel threshold at mid-scale."""

from __future__ import annotations

import matplotlib
import numpy as np

_ROWS = 256  # image rows coloured at a time


def heatmap_overlay(image: np.ndarray, anomaly_map: np.ndarray, *, threshold: float, alpha: float = 0.45) -> np.ndarray:
    """Blend a "turbo" heatmap of ``anomaly_map`` (H, W) over ``image`` (H, W, 3) uint8.

    The colour scale is piecewise linear with the pixel ``threshold`` at its middle (green-yellow): below it, from
    the map's 5th percentile (blue); above it, up to the map's maximum (red). Everything below the threshold stays
    in the cool half, so a good part never looks hot, and a defect always reaches red.
    """
    eps = 1e-6
    low = min(float(np.percentile(anomaly_map, 5)), threshold - eps)
    high = max(float(anomaly_map.max()), threshold + eps)
    colormap = matplotlib.colormaps["turbo"]
    table = (colormap(np.arange(colormap.N))[:, :3] * 255 * alpha).astype(np.float32)  # the colormap's own entries
    overlay = np.empty((*anomaly_map.shape, 3), np.uint8)
    for top in range(0, anomaly_map.shape[0], _ROWS):  # bounded float work: memory flat in the image's size
        rows = anomaly_map[top : top + _ROWS].astype(np.float32)
        below = 0.5 * (rows - low) / (threshold - low)
        above = 0.5 + 0.5 * (rows - threshold) / (high - threshold)
        scaled = np.clip(np.where(rows < threshold, below, above), 0, 1)
        index = np.minimum((scaled * colormap.N).astype(np.int32), colormap.N - 1)  # as matplotlib indexes it
        blended = image[top : top + _ROWS].astype(np.float32) * (1 - alpha) + table[index]
        overlay[top : top + _ROWS] = blended.round()
    return overlay
