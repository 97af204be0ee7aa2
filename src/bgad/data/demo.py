"""Small synthetic dataset in the MVTec AD layout, so that ``bgad demo`` runs without any downloaded data.

Every image shows the same procedural "part": a turned metal disc with concentric machining marks, a
recessed hub and a soft shadow, on a grainy grey-blue background. Normal images vary slightly (position
±3 px, brightness ±5 %, fresh texture noise); defective test images draw a scratch, a stain spot or a
crack on top of a freshly generated normal image, and their ground-truth mask is exactly the set of
changed pixels. The output is a pure function of the arguments: each image has its own random generator
derived from ``(seed, folder, index)``, so repeated calls give byte-identical PNG files.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

DEFECT_TYPES = ("scratch", "spot", "crack")
# One random stream per output folder; its position in this tuple is part of every image's seed.
_STREAMS = ("train/good", "test/good", *(f"test/{defect}" for defect in DEFECT_TYPES))
_MARKER = ".bgad_demo"  # marks a category folder as ours, so overwriting it never deletes real data
_MIN_ALPHA = 0.2  # defect coverage below this is dropped, so the mask is exactly the changed pixels


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return field / (field.std() + 1e-12)


def _normal_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float, float, float]:
    """Returns a float RGB image in [0, 1] and the part's centre x, centre y and radius."""
    yy, xx = np.indices((size, size), dtype=float)
    cx, cy = size / 2 + rng.uniform(-3.0, 3.0, 2)
    radius = 0.34 * size
    dist = np.hypot(xx - cx, yy - cy)
    cover = np.clip(radius - dist + 0.5, 0.0, 1.0)  # anti-aliased disc edge

    offset = 0.03 * size
    shadow = ndimage.gaussian_filter(
        np.clip(radius - np.hypot(xx - cx - offset, yy - cy - offset), 0.0, 1.0), size / 40
    )
    background = 0.30 + 0.04 * _smooth_noise(rng, size, size / 6) + 0.015 * _smooth_noise(rng, size, 0.8)
    background = (background * (1.0 - 0.35 * shadow))[..., None] * np.array([0.95, 1.0, 1.08])

    light = 0.78 + 0.12 * (cx - xx + cy - yy) / (radius * np.sqrt(2.0))  # lit from the top left
    rings = 0.025 * np.sin(2.0 * np.pi * dist / max(3.0, size / 40))
    hub = -0.08 * np.clip(0.3 * radius - dist + 0.5, 0.0, 1.0)
    bevel = -0.10 * np.clip((dist - 0.9 * radius) / (0.1 * radius), 0.0, 1.0)
    texture = 0.03 * _smooth_noise(rng, size, size / 8) + 0.02 * _smooth_noise(rng, size, 1.0)
    part = (light + rings + hub + bevel + texture)[..., None] * np.array([1.0, 0.97, 0.90])

    image = background * (1.0 - cover[..., None]) + part * cover[..., None]
    return np.clip(image * (1.0 + rng.uniform(-0.05, 0.05)), 0.0, 1.0), cx, cy, radius


def _point_in_disc(rng: np.random.Generator, cx: float, cy: float, radius: float) -> np.ndarray:
    angle, rad = rng.uniform(0.0, 2.0 * np.pi), radius * np.sqrt(rng.uniform())
    return np.array([cx + rad * np.cos(angle), cy + rad * np.sin(angle)])


def _polyline_distance(points: np.ndarray, size: int) -> np.ndarray:
    """Distance of every pixel centre to the polyline through ``points`` (shape (n, 2), x then y)."""
    yy, xx = np.indices((size, size), dtype=float)
    dist = np.full((size, size), np.inf)
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
        dist = np.minimum(dist, np.hypot(xx - x0 - t * dx, yy - y0 - t * dy))
    return dist


def _line_alpha(points: np.ndarray, width: float, size: int) -> np.ndarray:
    return np.clip(width / 2 + 0.5 - _polyline_distance(points, size), 0.0, 1.0)


def _defect_layer(
    rng: np.random.Generator, clean: np.ndarray, defect: str, cx: float, cy: float, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (alpha, target): the defective image is ``clean + alpha * (target - clean)``."""
    size = clean.shape[0]
    if defect == "scratch":  # a slightly bowed straight line, brighter or darker than the metal
        centre, angle = _point_in_disc(rng, cx, cy, 0.35 * radius), rng.uniform(0.0, np.pi)
        length = rng.uniform(0.5, 0.9) * radius
        t = np.linspace(-0.5, 0.5, 12)[:, None]
        along, across = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
        bow = rng.uniform(-0.15, 0.15) * length * (1.0 - 4.0 * t**2)
        points = centre + t * length * along + bow * across
        delta = rng.choice([-1.0, 1.0]) * rng.uniform(0.22, 0.35)
        return _line_alpha(points, rng.uniform(1.2, 2.5), size), clean + delta
    if defect == "spot":  # a soft-edged rotated ellipse of rust or oil with its own texture
        semi_major = rng.uniform(0.035, 0.075) * size
        semi_minor = semi_major * rng.uniform(0.5, 1.0)
        ex, ey = _point_in_disc(rng, cx, cy, 0.8 * (radius - 1.15 * semi_major))
        angle = rng.uniform(0.0, np.pi)
        yy, xx = np.indices((size, size), dtype=float)
        u = (xx - ex) * np.cos(angle) + (yy - ey) * np.sin(angle)
        v = (yy - ey) * np.cos(angle) - (xx - ex) * np.sin(angle)
        rho = np.hypot(u / semi_major, v / semi_minor)
        colour = np.array([[0.55, 0.30, 0.12], [0.16, 0.14, 0.11]])[rng.integers(2)]
        stain = colour * (1.0 + 0.15 * _smooth_noise(rng, size, 1.5))[..., None]
        return 0.9 * np.clip((1.15 - rho) / 0.4, 0.0, 1.0), stain
    # crack: a jagged random walk growing both ways from its origin, much darker than the metal
    origin, heading = _point_in_disc(rng, cx, cy, 0.3 * radius), rng.uniform(0.0, 2.0 * np.pi)
    step, halves = 1.5, []
    for direction in (heading, heading + np.pi):
        n_steps = max(2, round(rng.uniform(0.3, 0.5) * radius / step))
        angles = direction + rng.normal(0.0, 0.6, n_steps)
        moves = step * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        halves.append(origin + np.cumsum(moves, axis=0))
    points = np.concatenate([halves[1][::-1], origin[None], halves[0]])
    return _line_alpha(points, rng.uniform(1.0, 1.8), size), 0.25 * clean


def render_sample(image_size: int, seed: int, stream: str, index: int) -> tuple[np.ndarray, ...]:
    """Returns (clean, image, mask) as uint8 arrays for image ``index`` of folder ``stream``.

    ``clean`` is the normal image the defect was drawn on; for ``train/good`` and ``test/good`` the image
    equals ``clean`` and the mask is all zero. Pixels outside the mask are identical to ``clean``; inside it
    the defect covers each pixel by at least ``_MIN_ALPHA``.
    """
    rng = np.random.default_rng([seed, _STREAMS.index(stream), index])
    clean, cx, cy, radius = _normal_image(rng, image_size)
    defect = stream.removeprefix("test/")
    if defect not in DEFECT_TYPES:
        alpha, target = np.zeros((image_size, image_size)), clean
    else:
        alpha, target = _defect_layer(rng, clean, defect, cx, cy, radius)
        alpha = np.where(alpha >= _MIN_ALPHA, alpha, 0.0)
    image = np.clip(clean + alpha[..., None] * (target - clean), 0.0, 1.0)

    def to_uint8(array: np.ndarray) -> np.ndarray:
        return np.round(array * 255.0).astype(np.uint8)

    return to_uint8(clean), to_uint8(image), np.where(alpha > 0.0, 255, 0).astype(np.uint8)


def make_demo_dataset(
    root: str | Path,
    *,
    category: str = "demo_part",
    n_train: int = 60,
    n_test_good: int = 12,
    n_test_per_defect: int = 8,
    image_size: int = 128,
    seed: int = 0,
) -> Path:
    """Writes ROOT/CATEGORY/{train/good, test/good, test/<type>, ground_truth/<type>}; returns ROOT/CATEGORY.

    Images are RGB PNGs named ``000.png``, ``001.png``, ...; masks are 0/255 greyscale PNGs named
    ``000_mask.png``. An existing category folder written by an earlier call is replaced entirely; a
    non-empty folder of the same name that this function did not write raises ``FileExistsError``.
    """
    counts = {"n_train": n_train, "n_test_good": n_test_good, "n_test_per_defect": n_test_per_defect}
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if image_size < 64:
        raise ValueError(f"image_size must be at least 64, got {image_size!r}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed!r}")
    if not category or Path(category).name != category or category in (".", ".."):
        raise ValueError(f"category must be a plain folder name, got {category!r}")

    category_dir = Path(root) / category
    if category_dir.exists():
        if any(category_dir.iterdir()) and not (category_dir / _MARKER).exists():
            raise FileExistsError(f"{category_dir} exists and was not written by make_demo_dataset")
        shutil.rmtree(category_dir)
    category_dir.mkdir(parents=True)
    (category_dir / _MARKER).write_text("Synthetic data from bgad.data.demo.make_demo_dataset.\n")

    stream_counts = [n_train, n_test_good] + [n_test_per_defect] * len(DEFECT_TYPES)
    for stream, count in zip(_STREAMS, stream_counts, strict=True):
        image_dir, defect = category_dir / stream, stream.removeprefix("test/")
        image_dir.mkdir(parents=True)
        mask_dir = category_dir / "ground_truth" / defect
        if defect in DEFECT_TYPES:
            mask_dir.mkdir(parents=True)
        for index in range(count):
            _, image, mask = render_sample(image_size, seed, stream, index)
            Image.fromarray(image).save(image_dir / f"{index:03d}.png")
            if defect in DEFECT_TYPES:
                Image.fromarray(mask).save(mask_dir / f"{index:03d}_mask.png")
    return category_dir
