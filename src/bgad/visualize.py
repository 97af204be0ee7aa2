"""Heatmap overlays for people: anomaly maps drawn over their images on a fixed colour scale."""

from __future__ import annotations

import matplotlib
import numpy as np


def heatmap_overlay(image: np.ndarray, anomaly_map: np.ndarray, *, vmax: float, alpha: float = 0.45) -> np.ndarray:
    """Blend a "turbo" heatmap of ``anomaly_map`` (H, W) over ``image`` (H, W, 3) uint8.

    Colours run from 0 to ``vmax`` for every image alike (e.g. twice the pixel threshold, so that the threshold
    sits mid-scale): a normal image then looks calm instead of being stretched to its own maximum.
    """
    scaled = np.clip(anomaly_map / max(vmax, 1e-12), 0, 1)
    colours = matplotlib.colormaps["turbo"](scaled)[..., :3] * 255
    return (image * (1 - alpha) + colours * alpha).round().astype(np.uint8)
