"""Anomaly synthesis (RandAugmented CutPaste, NSA) and automatic foreground masks."""

import random

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from bgad.data.foreground import estimate_foreground
from bgad.data.synthesis import AUGMENTATIONS, augment_defect, cut_paste, nsa, paste_defect

from .conftest import SHARED_DATA

BOTTLE = SHARED_DATA / "bottle"
SIZE = 64
RED, BLUE = (200, 30, 30), (20, 120, 220)
# Operations that map a constant-colour image to the same constant colour (geometry, blur; no noise or colour).
COLOUR_KEEPING = tuple(AUGMENTATIONS[i] for i in (0, 1, 2, 3, 5, 6, 7))


def constant(colour: tuple[int, int, int], size: int = SIZE) -> np.ndarray:
    return np.full((size, size, 3), colour, np.uint8)


def disc(size: int = SIZE, radius: float = 20, centre: tuple[float, float] = (32, 32)) -> np.ndarray:
    yy, xx = np.ogrid[:size, :size]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def blob_mask(size: int = SIZE) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[20:30, 22:34] = True
    mask[30:34, 26:30] = True
    return mask


def texture(seed: int, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_augment_defect_is_deterministic_binary_and_ignores_global_random_state() -> None:
    image, mask = texture(0), blob_mask()
    random.seed(1)
    np.random.seed(1)
    first = augment_defect(image, mask, np.random.default_rng(5))
    random.seed(2)
    np.random.seed(2)
    again = augment_defect(image, mask, np.random.default_rng(5))
    assert np.array_equal(first[0], again[0])
    assert np.array_equal(first[1], again[1])
    assert first[1].dtype == bool
    assert first[1].shape == mask.shape
    assert first[0].shape == image.shape
    assert first[0].dtype == np.uint8
    others = [augment_defect(image, mask, np.random.default_rng(seed)) for seed in range(6, 10)]
    assert any(not np.array_equal(first[0], other[0]) for other in others)


def test_augment_defect_rejects_too_many_ops() -> None:
    with pytest.raises(ValueError, match="n_ops"):
        augment_defect(texture(0), blob_mask(), np.random.default_rng(0), n_ops=len(AUGMENTATIONS) + 1)


@pytest.mark.parametrize("seed", range(12))
def test_cut_paste_label_is_exactly_the_pasted_pixels(seed: int) -> None:
    normal, anomaly = constant(BLUE), constant(RED)
    # Even seeds: the defect lies in the foreground (pasted in place); odd: it does not (relocated).
    foreground = disc() if seed % 2 == 0 else disc(radius=10, centre=(48, 48))
    image, label = cut_paste(normal, foreground, anomaly, blob_mask(), np.random.default_rng(seed), ops=COLOUR_KEEPING)
    assert label.shape == (SIZE, SIZE)
    assert label.dtype == bool
    assert label.any()
    assert np.array_equal(image[~label], normal[~label])
    assert (image[label] == RED).all()


@pytest.mark.parametrize("seed", range(8))
def test_cut_paste_with_all_ops_changes_only_the_label(seed: int) -> None:
    normal, foreground = texture(1), disc()
    corner = np.zeros((SIZE, SIZE), bool)
    corner[2:9, 3:8] = True  # outside the foreground disc: relocated into it unless augmentation moves it there
    image, label = cut_paste(normal, foreground, texture(2), corner, np.random.default_rng(seed))
    assert label.any()
    assert (label & foreground).any()
    assert np.array_equal(image[~label], normal[~label])


def test_cut_paste_is_deterministic_per_seed() -> None:
    args = (texture(1), disc(), texture(2), blob_mask())
    a = cut_paste(*args, np.random.default_rng(3))
    b = cut_paste(*args, np.random.default_rng(3))
    assert np.array_equal(a[0], b[0])
    assert np.array_equal(a[1], b[1])
    others = [cut_paste(*args, np.random.default_rng(seed)) for seed in range(4, 8)]
    assert any(not np.array_equal(a[1], other[1]) for other in others)


def test_cut_paste_resizes_the_anomaly_to_the_normal_image() -> None:
    small_mask = np.zeros((40, 40), np.uint8)
    small_mask[10:20, 12:22] = 255
    image, label = cut_paste(texture(1), None, texture(2, size=40), small_mask, np.random.default_rng(0))
    assert image.shape == (SIZE, SIZE, 3)
    assert label.shape == (SIZE, SIZE)
    assert label.any()


@pytest.mark.parametrize("fill", [False, True])
def test_cut_paste_rejects_empty_and_full_masks(fill: bool) -> None:
    mask = np.full((SIZE, SIZE), fill)
    with pytest.raises(ValueError, match="empty or covers"):
        cut_paste(texture(1), None, texture(2), mask, np.random.default_rng(0))


@pytest.mark.parametrize("seed", range(10))
def test_relocated_region_is_moved_whole_with_its_centroid_in_the_foreground(seed: int) -> None:
    normal, defect, foreground = texture(1), texture(2), disc(radius=12)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[50:57, 2:11] = True  # outside the foreground
    mask[57:60, 2:5] = True
    image, label = paste_defect(normal, foreground, defect, mask, np.random.default_rng(seed))
    assert label.sum() == mask.sum()  # moved whole: the central box keeps it inside the image
    ys, xs = np.nonzero(label)
    assert foreground[round(ys.mean()), round(xs.mean())]
    src_ys, src_xs = np.nonzero(mask)
    dy, dx = ys.min() - src_ys.min(), xs.min() - src_xs.min()
    assert np.array_equal(ys, src_ys + dy)  # a pure translation of the region
    assert np.array_equal(xs, src_xs + dx)
    assert np.array_equal(image[label], defect[mask])  # row-major order is kept by a translation
    assert np.array_equal(image[~label], normal[~label])


def test_each_region_is_relocated_independently() -> None:
    foreground = disc(radius=10)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[2:6, 2:6] = True
    mask[58:62, 50:60] = True
    checked = 0
    for seed in range(10):
        _, label = paste_defect(texture(1), foreground, texture(2), mask, np.random.default_rng(seed))
        regions, count = ndimage.label(label, structure=np.ones((3, 3)))
        for index in range(1, count + 1):
            ys, xs = np.nonzero(regions == index)
            if len(ys) in (16, 40):  # a region that did not merge with the other one
                assert foreground[round(ys.mean()), round(xs.mean())]
                checked += 1
    assert checked >= 10


def test_paste_in_place_when_mostly_in_foreground_or_nowhere_to_go() -> None:
    normal, defect, mask = texture(1), texture(2), blob_mask()
    image, label = paste_defect(normal, disc(), defect, mask, np.random.default_rng(0))
    assert np.array_equal(label, mask)
    assert np.array_equal(image[mask], defect[mask])
    corner_only = np.zeros((SIZE, SIZE), bool)
    corner_only[:3, :3] = True  # foreground only outside the admissible central box
    image, label = paste_defect(normal, corner_only, defect, mask, np.random.default_rng(0))
    assert np.array_equal(label, mask)


@pytest.mark.parametrize("seed", range(6))
def test_nsa_label_is_changed_pixels_inside_the_foreground(seed: int) -> None:
    destination = constant(BLUE)
    destination[:, : SIZE // 2] = (90, 90, 90)
    foreground = disc(radius=22)
    image, label = nsa(texture(3), destination, foreground, np.random.default_rng(seed))
    changed = (image != destination).any(axis=2)
    assert label.dtype == bool
    assert label.any()
    assert not (label & ~changed).any()
    assert np.array_equal(image[~foreground], destination[~foreground])


def test_nsa_without_foreground_and_determinism() -> None:
    source, destination = texture(3), texture(4)
    a = nsa(source, destination, None, np.random.default_rng(1))
    b = nsa(source, destination, None, np.random.default_rng(1))
    c = nsa(source, destination, None, np.random.default_rng(2))
    assert a[1].any()
    assert np.array_equal(a[0], b[0])
    assert np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_nsa_raises_when_nothing_can_be_synthesised() -> None:
    tiny = np.zeros((SIZE, SIZE), bool)
    tiny[30:33, 30:33] = True
    with pytest.raises(ValueError, match="NSA"):
        nsa(texture(3), texture(4), tiny, np.random.default_rng(0))
    with pytest.raises(ValueError, match="NSA"):
        nsa(constant(BLUE), constant(BLUE), None, np.random.default_rng(0))


def test_foreground_of_a_disc_on_a_uniform_background() -> None:
    rng = np.random.default_rng(0)
    truth = disc(size=160, radius=40, centre=(70, 90))
    image = np.full((160, 160, 3), (210, 205, 190), np.float64)
    image[truth] = (60, 90, 150)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    mask = estimate_foreground(image)
    assert mask.dtype == bool
    assert mask.shape == truth.shape
    assert (mask & truth).sum() / (mask | truth).sum() > 0.9


def test_foreground_of_a_texture_or_blank_image_is_everything() -> None:
    assert estimate_foreground(texture(0, size=128)).all()
    assert estimate_foreground(constant(BLUE, size=128)).all()


@pytest.mark.skipif(not BOTTLE.is_dir(), reason="MVTec AD bottle not in ../shared")
@pytest.mark.parametrize("name", ["000.png", "100.png"])
def test_foreground_of_real_bottles_is_a_central_object(name: str) -> None:
    image = np.asarray(Image.open(BOTTLE / "train" / "good" / name).convert("RGB"))
    mask = estimate_foreground(image)
    assert 0.2 <= mask.mean() <= 0.8
    assert mask[mask.shape[0] // 2, mask.shape[1] // 2]
