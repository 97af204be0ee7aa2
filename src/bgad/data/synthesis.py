"""Anomaly synthesis for training: RandAugmented CutPaste of known defects (§4.3) and NSA (§4.4).

Every function takes an explicit :class:`numpy.random.Generator` and never touches a global random state:
the same generator state gives the same output. Images are (H, W, 3) uint8 arrays, masks (H, W) bool arrays.
Functions raise :class:`ValueError` when no anomaly can be synthesised from their inputs; callers skip the sample.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import cv2
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations asks PyPI for updates on import otherwise
import albumentations as A

Image = NDArray[np.uint8]
Mask = NDArray[np.bool_]
_REFLECT = cv2.BORDER_REFLECT_101  # the reference's albumentations 0.x/1.x default border for geometric ops


def _elastic(size: int, p: float) -> A.ElasticTransform:
    """Smooth random warp: displacement std about 2 % of ``size`` (uniform noise blurred with sigma 4 % of size)."""
    sigma = 0.04 * size
    # Uniform [-1, 1] noise blurred by a Gaussian of std sigma has std about 0.163 / sigma.
    return A.ElasticTransform(
        alpha=0.02 * size * sigma / 0.163, sigma=sigma, noise_distribution="uniform", border_mode=_REFLECT, p=p
    )


#: The reference's ten RandAugment operations (§4.3), each a factory of a fresh albumentations transform given the
#: image's shorter side in pixels, translated to albumentations 2: Flip -> horizontal, vertical or both flips,
#: ShiftScaleRotate -> Affine, IAAAdditiveGaussianNoise -> AdditiveNoise, IAASharpen/IAAEmboss -> Sharpen/Emboss,
#: IAAPiecewiseAffine -> ElasticTransform (albumentations 2's PiecewiseAffine takes seconds per image), scaled to
#: smooth displacements of about 2 % of the image, like the reference's 3-5 % jitter of a 4x4 control grid.
AUGMENTATIONS: tuple[Callable[[int], A.BasicTransform], ...] = (
    lambda _: A.RandomRotate90(p=0.5),
    lambda _: A.OneOf(  # old albumentations' Flip: horizontal, vertical or both
        [A.HorizontalFlip(p=1), A.VerticalFlip(p=1), A.Sequential([A.HorizontalFlip(p=1), A.VerticalFlip(p=1)], p=1)],
        p=0.5,
    ),
    lambda _: A.Transpose(p=0.5),
    lambda _: A.OpticalDistortion(distort_limit=1.0, border_mode=_REFLECT, p=1),
    lambda _: A.OneOf(
        [
            A.AdditiveNoise(
                noise_type="gaussian",
                spatial_mode="per_pixel",
                noise_params={"mean_range": (0.0, 0.0), "std_range": (0.01, 0.05)},
            ),
            A.GaussNoise(std_range=(10**0.5 / 255, 50**0.5 / 255)),
        ],
        p=0.2,
    ),
    lambda _: A.OneOf([A.MotionBlur(p=0.2), A.MedianBlur(blur_limit=3, p=0.1), A.Blur(blur_limit=3, p=0.1)], p=0.2),
    lambda _: A.Affine(
        translate_percent=(-0.0625, 0.0625), scale=(0.8, 1.2), rotate=(-45, 45), border_mode=_REFLECT, p=0.2
    ),
    lambda size: A.OneOf(
        [
            A.OpticalDistortion(border_mode=_REFLECT, p=0.3),
            A.GridDistortion(border_mode=_REFLECT, p=0.1),
            _elastic(size, p=0.3),
        ],
        p=0.2,
    ),
    lambda _: A.OneOf([A.CLAHE(clip_limit=2), A.Sharpen(), A.Emboss(), A.RandomBrightnessContrast()], p=0.3),
    lambda _: A.HueSaturationValue(p=0.3),
)

_AUGMENT_TRIES = 5
_NSA_TRIES = 20
_NSA_MIN_AREA = 50
_NSA_TOLERANCE = 1.0


def _check_image(image: np.ndarray, name: str) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{name} must be an (H, W, 3) uint8 array, got {image.shape} {image.dtype}")


def _as_mask(mask: np.ndarray | None, shape: tuple[int, int], name: str) -> Mask:
    if mask is None:
        return np.ones(shape, bool)
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {mask.shape}")
    return mask > 0


def augment_defect(
    image: Image,
    mask: np.ndarray,
    rng: np.random.Generator,
    n_ops: int = 3,
    ops: Sequence[Callable[[int], A.BasicTransform]] = AUGMENTATIONS,
) -> tuple[Image, Mask]:
    """Apply ``n_ops`` distinct operations drawn from ``ops``, in the drawn order, jointly to a defect image and mask.

    This is the reference's RandAugment of the anomaly (§4.3). Draws that push the whole defect out of the image are
    redrawn a few times; if all fail the defect is returned unaugmented. The returned mask is binary (bool).
    """
    _check_image(image, "image")
    binary = _as_mask(mask, image.shape[:2], "mask")
    if not 0 <= n_ops <= len(ops):
        raise ValueError(f"n_ops must be in [0, {len(ops)}], got {n_ops}")
    chosen = rng.choice(len(ops), size=n_ops, replace=False)
    compose = A.Compose([ops[i](min(image.shape[:2])) for i in chosen], seed=int(rng.integers(2**31)))
    for _ in range(_AUGMENT_TRIES):
        out = compose(image=image, mask=binary.astype(np.uint8))
        out_mask = out["mask"] > 0
        if out_mask.any():
            return np.ascontiguousarray(out["image"]), out_mask
    return image.copy(), binary


def paste_defect(
    normal: Image, foreground: Mask, defect: Image, mask: Mask, rng: np.random.Generator
) -> tuple[Image, Mask]:
    """Paste the ``mask`` pixels of ``defect`` into ``normal`` (§4.3); returns the image and exactly the pasted pixels.

    In place if more than 2/3 of the mask lies in the foreground. Otherwise every connected region is moved whole
    so that its centroid lands on a random admissible point: foreground inside a central box whose margins are half
    the largest region height/width (the reference loses the regions' last bounding-box row and column; we do not).
    Pixels moved outside the image are dropped. Without an admissible point the defect is pasted in place.
    """
    height, width = mask.shape
    image, label = normal.copy(), np.zeros_like(mask)
    regions, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    boxes = ndimage.find_objects(regions)
    admissible = np.zeros_like(mask)
    if np.count_nonzero(mask & foreground) <= 2 / 3 * np.count_nonzero(mask):
        margin_y = max(box[0].stop - box[0].start for box in boxes) // 2
        margin_x = max(box[1].stop - box[1].start for box in boxes) // 2
        admissible[margin_y : height - margin_y, margin_x : width - margin_x] = True
        admissible &= foreground
    points = np.flatnonzero(admissible)
    if points.size == 0:
        image[mask] = defect[mask]
        return image, mask.copy()
    for index, box in enumerate(boxes, start=1):
        ys, xs = np.nonzero(regions[box] == index)
        ys, xs = ys + box[0].start, xs + box[1].start
        target_y, target_x = divmod(int(points[rng.integers(points.size)]), width)
        new_y = ys + target_y - round(float(ys.mean()))
        new_x = xs + target_x - round(float(xs.mean()))
        inside = (new_y >= 0) & (new_y < height) & (new_x >= 0) & (new_x < width)
        image[new_y[inside], new_x[inside]] = defect[ys[inside], xs[inside]]
        label[new_y[inside], new_x[inside]] = True
    return image, label


def cut_paste(
    normal: Image,
    normal_foreground: np.ndarray | None,
    anomaly: Image,
    anomaly_mask: np.ndarray,
    rng: np.random.Generator,
    *,
    n_ops: int = 3,
    ops: Sequence[Callable[[int], A.BasicTransform]] = AUGMENTATIONS,
) -> tuple[Image, Mask]:
    """RandAugmented CutPaste (§4.3): a real defect, augmented, pasted into the foreground of a normal image.

    ``anomaly`` and ``anomaly_mask`` are resized to the normal image's size if they differ; ``normal_foreground``
    None means the whole image. Returns the synthetic image and its label, exactly the pasted pixels.
    Raises ValueError if ``anomaly_mask`` is empty or covers the whole image.
    """
    _check_image(normal, "normal")
    _check_image(anomaly, "anomaly")
    height, width = normal.shape[:2]
    foreground = _as_mask(normal_foreground, (height, width), "normal_foreground")
    anomaly_mask = np.asarray(anomaly_mask)
    if anomaly.shape[:2] != (height, width):
        anomaly = cv2.resize(anomaly, (width, height), interpolation=cv2.INTER_LINEAR)
    if anomaly_mask.shape[:2] != (height, width):
        binary = (anomaly_mask > 0).astype(np.uint8)
        anomaly_mask = cv2.resize(binary, (width, height), interpolation=cv2.INTER_NEAREST)
    mask = _as_mask(anomaly_mask, (height, width), "anomaly_mask")
    if not mask.any() or mask.all():
        raise ValueError("anomaly_mask is empty or covers the whole image: nothing to cut")
    defect, defect_mask = augment_defect(anomaly, mask, rng, n_ops=n_ops, ops=ops)
    return paste_defect(normal, foreground, defect, defect_mask, rng)


def nsa(
    source: Image, destination: Image, destination_foreground: np.ndarray | None, rng: np.random.Generator
) -> tuple[Image, Mask]:
    """Natural Synthetic Anomaly (§4.4): a rescaled patch of ``source`` Poisson-blended into ``destination``.

    The patch is a rectangle with half-widths uniform in [5 %, 20 %) of each dimension around a random centre,
    rescaled by clip(N(1, 0.5), 0.7, 1.3) and cloned with ``cv2.seamlessClone`` (NORMAL_CLONE, mask border zeroed)
    at a random location. Unlike the reference, the location lies in ``destination_foreground`` (None: the whole
    image) and the blend is clipped to it, so pixels outside the foreground are untouched. The label is the
    pixels whose mean absolute change exceeds 1, 5x5 median-filtered, restricted to pixels that changed.
    Draws whose blend mask has fewer than 50 px or whose label is empty are redrawn; raises ValueError after
    20 failed draws (for example when the foreground is too small).
    """
    _check_image(source, "source")
    _check_image(destination, "destination")
    height, width = destination.shape[:2]
    foreground = _as_mask(destination_foreground, (height, width), "destination_foreground")
    if source.shape[:2] != (height, width):
        source = cv2.resize(source, (width, height), interpolation=cv2.INTER_LINEAR)
    for _ in range(_NSA_TRIES):
        half_h = int(rng.uniform(0.05, 0.2) * height)
        half_w = int(rng.uniform(0.05, 0.2) * width)
        centre_y = int(rng.integers(half_h, height - half_h + 1))
        centre_x = int(rng.integers(half_w, width - half_w + 1))
        patch = source[centre_y - half_h : centre_y + half_h, centre_x - half_w : centre_x + half_w]
        factor = float(np.clip(rng.normal(1.0, 0.5), 0.7, 1.3))
        patch_h = min(height - 2, max(1, round(2 * half_h * factor)))
        patch_w = min(width - 2, max(1, round(2 * half_w * factor)))
        if (patch_h - 2) * (patch_w - 2) < _NSA_MIN_AREA:
            continue
        patch = cv2.resize(patch, (patch_w, patch_h), interpolation=cv2.INTER_LINEAR)
        # Patch centres in the foreground that keep the whole patch at least one pixel off the image border.
        admissible = np.zeros_like(foreground)
        admissible[
            1 + patch_h // 2 : height - patch_h + patch_h // 2, 1 + patch_w // 2 : width - patch_w + patch_w // 2
        ] = True
        points = np.flatnonzero(admissible & foreground)
        if points.size == 0:
            continue
        top, left = divmod(int(points[rng.integers(points.size)]), width)
        top, left = top - patch_h // 2, left - patch_w // 2
        blend = np.zeros_like(foreground)
        blend[top + 1 : top + patch_h - 1, left + 1 : left + patch_w - 1] = True
        blend &= foreground
        if np.count_nonzero(blend) < _NSA_MIN_AREA:
            continue
        placed = np.zeros_like(destination)
        placed[top : top + patch_h, left : left + patch_w] = patch
        blend_u8 = blend.astype(np.uint8) * 255
        x, y, w, h = cv2.boundingRect(blend_u8)
        # seamlessClone centres the mask's bounding box on this point: the patch stays where we placed it.
        cloned = cv2.seamlessClone(placed, destination, blend_u8, (x + w // 2, y + h // 2), cv2.NORMAL_CLONE)
        image = np.where(blend[..., None], cloned, destination)
        change = np.abs(image.astype(np.int16) - destination.astype(np.int16))
        changed = change.mean(axis=2) > _NSA_TOLERANCE
        label = (cv2.medianBlur(changed.astype(np.uint8) * 255, 5) > 0) & change.any(axis=2)
        if label.any():
            return image, label
    raise ValueError("NSA found no usable patch placement (is the destination foreground very small?)")
