"""Automatic foreground (object) masks for anomaly synthesis, without user-supplied mask files.

The rule (:func:`estimate_foreground`), computed on a copy downscaled to at most 256 px and lightly blurred:

1. The *border colour* is the per-channel median of a thin frame of border pixels (2 % of the shorter side).
2. Every pixel's foreground evidence is the Euclidean RGB distance of its colour from the border colour.
3. That distance is split in two by Otsu's threshold (numpy, 256 bins).
4. The split is only trusted when the border really is a background: if more than 15 % of the frame pixels lie
   above the threshold (a texture, or an object filling the frame), or if the image has almost no contrast to the
   border colour, the whole image is foreground.
5. The mask is cleaned with a morphological closing then opening (disc of 1 % of the shorter side), holes are
   filled (an object's dark interior, such as a bottle mouth, is part of the object), and connected components
   smaller than 10 % of the largest one are dropped.
6. If the result covers more than 90 % or less than 5 % of the image it is not a plausible object: the whole image
   is foreground.

Whole-image foreground is the safe answer: synthesis then places anomalies anywhere, as the reference does for
textures (BGAD reference code, §4.3 of the method description).
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

WORK_SIZE = 256
FRAME_FRACTION = 0.02
MAX_BORDER_ABOVE = 0.15
MIN_CONTRAST = 12.0
MIN_COVERAGE, MAX_COVERAGE = 0.05, 0.90
MIN_COMPONENT_FRACTION = 0.10


def otsu_threshold(values: NDArray[np.floating], bins: int = 256) -> float:
    """Otsu's threshold of non-negative ``values``: the cut maximising the between-class variance."""
    top = float(values.max())
    if top <= 0:
        return 0.0
    hist, edges = np.histogram(values, bins=bins, range=(0.0, top))
    p = hist.astype(np.float64) / hist.sum()
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    total = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total * w0 - m0) ** 2 / (w0 * (1 - w0))
    between[~np.isfinite(between)] = 0
    return float(edges[int(np.argmax(between)) + 1])


def _frame(array: NDArray, width: int) -> NDArray:
    """The pixels of a frame ``width`` pixels wide along the image border, as (N, C)."""
    h, w = array.shape[:2]
    frame = np.zeros((h, w), bool)
    frame[:width], frame[-width:], frame[:, :width], frame[:, -width:] = True, True, True, True
    return array[frame]


def _disc(radius: int) -> NDArray[np.bool_]:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def estimate_foreground(image: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """Estimate the object region of an (H, W, 3) uint8 image as an (H, W) bool mask.

    See the module docstring for the rule. Returns all-True (the whole image is foreground) for textures,
    objects filling the frame, images without contrast and implausibly small or large masks.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    height, width = image.shape[:2]
    everything = np.ones((height, width), bool)
    scale = min(1.0, WORK_SIZE / max(height, width))
    small = image
    if scale < 1.0:
        size = (max(8, round(width * scale)), max(8, round(height * scale)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    work = cv2.GaussianBlur(small.astype(np.float32), (0, 0), sigmaX=1.0)
    h, w = work.shape[:2]
    if min(h, w) < 8:
        return everything

    frame_width = max(1, round(FRAME_FRACTION * min(h, w)))
    border_colour = np.median(_frame(work, frame_width), axis=0)
    distance = np.linalg.norm(work - border_colour, axis=2)
    if float(np.percentile(distance, 99)) < MIN_CONTRAST:
        return everything
    threshold = max(otsu_threshold(distance), MIN_CONTRAST / 2)
    if np.mean(_frame(distance, frame_width) > threshold) > MAX_BORDER_ABOVE:
        return everything

    radius = max(1, round(0.01 * min(h, w)))
    mask = ndimage.binary_closing(distance > threshold, structure=_disc(radius), border_value=0)
    mask = ndimage.binary_opening(mask, structure=_disc(radius))
    mask = ndimage.binary_fill_holes(mask)
    labels, count = ndimage.label(mask)
    if count == 0:
        return everything
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    keep = np.flatnonzero(areas >= MIN_COMPONENT_FRACTION * areas.max()) + 1
    mask = np.isin(labels, keep)

    if (h, w) != (height, width):
        mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    coverage = float(mask.mean())
    if not MIN_COVERAGE <= coverage <= MAX_COVERAGE:
        return everything
    return mask
