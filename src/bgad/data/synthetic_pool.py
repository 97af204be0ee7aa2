"""Pools of synthetic anomalies drawn during training (reference §4.3-4.4).

Synthetic images change between epochs, so their features cannot be cached for the whole run like the real
images'. A pool of ``synthetic_repeats x known anomalies`` images is drawn, its features extracted once, and it is
replaced every ``synthesis_refresh`` meta-epochs. Drawing is seeded by (seed, round) only.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import BGADError
from .foreground import estimate_foreground
from .images import ImageSource, read_image, read_mask
from .synthesis import cut_paste, nsa

# NSA needs no real anomaly; without known anomalies its pool is synthetic_repeats x this many images.
_NSA_BASE = 10


class SyntheticAnomalies:
    """Draws pools of synthetic anomalous images (uint8 RGB) with their masks from the training images."""

    def __init__(
        self,
        method: str,
        normal_images: Sequence[ImageSource],
        known_images: Sequence[ImageSource],
        known_masks: Sequence[np.ndarray],
        *,
        repeats: int,
        foreground: str,
        seed: int,
    ):
        if method not in ("cutpaste", "nsa"):
            raise BGADError(f"unknown synthesis {method!r}; use cutpaste, nsa or none")
        self.method = method
        self.normal_images = list(normal_images)
        self.known = [
            (np.asarray(read_image(image)), mask) for image, mask in zip(known_images, known_masks, strict=True)
        ]
        self.pool_size = repeats * (len(self.known) if method == "cutpaste" else max(len(self.known), _NSA_BASE))
        self.foreground = foreground
        self.seed = seed
        self._foregrounds: dict[int, np.ndarray] = {}  # estimated once per normal image, on first use

    @property
    def active(self) -> bool:
        return self.pool_size > 0 and len(self.normal_images) >= (2 if self.method == "nsa" else 1)

    def _normal(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = np.asarray(read_image(self.normal_images[index]))
        if index not in self._foregrounds:
            self._foregrounds[index] = self._foreground_of(index, image)
        return image, self._foregrounds[index]

    def _foreground_of(self, index: int, image: np.ndarray) -> np.ndarray:
        if self.foreground == "full":
            return np.ones(image.shape[:2], dtype=bool)
        if self.foreground == "auto":
            return estimate_foreground(image)
        source = self.normal_images[index]
        if not isinstance(source, str | Path):
            raise BGADError("a foreground mask folder needs the normal images as file paths")
        path = Path(self.foreground) / f"{Path(source).stem}.png"
        mask = read_mask(path)
        if mask.shape != image.shape[:2]:
            raise BGADError(f"foreground mask {path} is {mask.shape[::-1]}, its image is {image.shape[1::-1]}")
        return mask

    def _draw_one(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.method == "cutpaste":
            normal, foreground = self._normal(int(rng.integers(len(self.normal_images))))
            anomaly, mask = self.known[index % len(self.known)]
            return cut_paste(normal, foreground, anomaly, mask, rng)
        source, destination = rng.choice(len(self.normal_images), size=2, replace=False)
        return nsa(self._normal(int(source))[0], *self._normal(int(destination)), rng)

    def draw(self, round_: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """A fresh pool: ``pool_size`` images (H, W, 3) uint8 and their boolean masks (H, W)."""
        rng = np.random.default_rng([self.seed, round_])
        images, masks, failures = [], [], 0
        for i in range(self.pool_size):
            try:
                image, label = self._draw_one(i, rng)
            except BGADError:  # an unreadable image or foreground mask: the user must fix it
                raise
            except ValueError:  # this draw made no anomaly (e.g. an empty augmented mask)
                failures += 1
                continue
            images.append(image)
            masks.append(label)
        if failures:
            warnings.warn(
                f"{failures} of {self.pool_size} synthetic anomalies could not be made and were skipped", stacklevel=2
            )
        return images, masks
