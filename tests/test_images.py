"""Images and masks as they come: every file kind and array type read by one documented rule."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from bgad import BGADError
from bgad.data.images import binarize_mask, image_shape, read_image, read_mask
from bgad.method.fitting import masks_for

GRADIENT = np.arange(0, 256, 16, dtype=np.uint8).reshape(4, 4)  # 0, 16, ..., 240


def as_array(source: object) -> np.ndarray:
    image = read_image(source)
    assert image.mode == "RGB"
    return np.asarray(image)


def gray3(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=2)


def save(tmp_path: Path, name: str, image: Image.Image, **params: object) -> Path:
    path = tmp_path / name
    image.save(path, **params)
    return path


def palette_image(indices: np.ndarray, colours: list[tuple[int, int, int]]) -> Image.Image:
    image = Image.frombytes("P", indices.shape[::-1], indices.astype(np.uint8).tobytes())
    image.putpalette([c for colour in colours for c in colour])
    return image


@pytest.mark.parametrize("name", ["gray.png", "gray.bmp", "gray.tif"])
def test_8_bit_grayscale_files_are_replicated_to_rgb(tmp_path: Path, name: str) -> None:
    np.testing.assert_array_equal(as_array(save(tmp_path, name, Image.fromarray(GRADIENT))), gray3(GRADIENT))


@pytest.mark.parametrize("name", ["rgb.png", "rgb.bmp", "rgb.tif"])
def test_rgb_files_are_read_exactly(tmp_path: Path, name: str) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(as_array(save(tmp_path, name, Image.fromarray(rgb))), rgb)


@pytest.mark.parametrize("name", ["gray16.png", "gray16.tif"])
def test_16_bit_files_keep_the_top_8_bits(tmp_path: Path, name: str) -> None:
    values = np.array([[0, 0x1234], [0xFFFF, 0x00FF]], dtype=np.uint16)
    path = save(tmp_path, name, Image.fromarray(values))
    assert Image.open(path).mode.startswith("I")
    np.testing.assert_array_equal(as_array(path), gray3(np.array([[0, 0x12], [0xFF, 0x00]], np.uint8)))


def test_rgba_drops_alpha_and_keeps_colour(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[0, 0, 3] = 255  # one opaque pixel, the rest transparent: all keep their colour
    got = as_array(save(tmp_path, "rgba.png", Image.fromarray(rgba)))
    np.testing.assert_array_equal(got, np.broadcast_to(np.array([10, 200, 30], np.uint8), (2, 2, 3)))


def test_palette_files_map_indices_to_their_colours(tmp_path: Path) -> None:
    indices = np.array([[0, 1], [2, 1]])
    colours = [(0, 0, 0), (255, 0, 0), (0, 0, 255)]
    got = as_array(save(tmp_path, "palette.png", palette_image(indices, colours)))
    np.testing.assert_array_equal(got, np.array(colours, np.uint8)[indices])


@pytest.mark.parametrize(("orientation", "k"), [(6, -1), (8, 1)])  # 6: turn clockwise to view; 8: anticlockwise
def test_jpeg_exif_orientation_is_applied(tmp_path: Path, orientation: int, k: int) -> None:
    stored = np.zeros((32, 64), np.uint8)
    stored[:16, :16] = 255  # a bright top-left block shows where the image went
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(tmp_path, "rotated.jpg", Image.fromarray(stored), exif=exif, quality=95)
    got = as_array(path)
    assert got.shape == (64, 32, 3)
    assert image_shape(path) == (64, 32)
    assert np.abs(got[..., 0].astype(int) - np.rot90(stored, k)).mean() < 3  # JPEG is lossy


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.fromarray(np.array([[True, False]])), [[255, 255, 255], [0, 0, 0]]),
        (Image.new("CMYK", (2, 1), (0, 0, 0, 0)), [[255, 255, 255]] * 2),
        (Image.fromarray(np.array([[-5.0, 99.7, 300.0]], np.float32)), [[0] * 3, [99] * 3, [255] * 3]),
        (Image.fromarray(np.array([[70000, 0x1234, -3]], np.int32)), [[255] * 3, [0x12] * 3, [0] * 3]),
        (Image.new("LA", (2, 1), (77, 0)), [[77, 77, 77]] * 2),
    ],
    ids=["bilevel", "cmyk", "float", "int32", "gray-alpha"],
)
def test_other_pil_modes_become_rgb(image: Image.Image, expected: list) -> None:
    np.testing.assert_array_equal(as_array(image)[0], np.array(expected, np.uint8))


def test_arrays_of_each_supported_layout() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    np.testing.assert_array_equal(as_array(GRADIENT), gray3(GRADIENT))
    np.testing.assert_array_equal(as_array(rgb), rgb)
    np.testing.assert_array_equal(as_array(np.dstack([rgb, np.zeros((3, 4), np.uint8)])), rgb)
    np.testing.assert_array_equal(as_array(rgb.astype(np.uint16) << 8), rgb)
    np.testing.assert_array_equal(as_array(GRADIENT.astype(np.uint16) * 257), gray3(GRADIENT))
    with pytest.raises(BGADError, match="cannot read an image array"):
        read_image(np.zeros((3, 4, 3), np.float64))


ANTI_ALIASED = np.array([[0, 60, 127, 128, 200, 255]], np.uint8)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.fromarray(np.array([[0, 255, 0]], np.uint8)), [False, True, False]),
        (Image.fromarray(np.array([[0, 1, 0]], np.uint8)), [False, True, False]),
        (Image.fromarray(np.array([[0, 1, 2, 3]], np.uint8)), [False, True, True, True]),  # VisA-style classes
        (Image.fromarray(ANTI_ALIASED), [False, False, False, True, True, True]),
        (palette_image(np.array([[0, 1, 2]]), [(0, 0, 0), (1, 1, 1), (255, 255, 255)]), [False, True, True]),
        (palette_image(np.array([[0, 1]]), [(255, 255, 255), (0, 0, 0)]), [False, True]),  # index, not colour
        (Image.fromarray(np.array([[[0, 0, 0], [255, 0, 0], [100, 0, 0]]], np.uint8)), [False, True, False]),
        (Image.fromarray(np.array([[[0, 0, 0, 255], [255, 0, 0, 0]]], np.uint8)), [False, True]),  # alpha dropped
        (Image.fromarray(np.array([[0, 65535, 40000, 30000]], np.uint16)), [False, True, True, False]),
        (Image.fromarray(np.array([[0, 1, 0]], np.uint16)), [False, True, False]),
        (Image.fromarray(np.array([[True, False]])), [True, False]),
    ],
    ids=[
        "0-255",
        "0-1",
        "classes",
        "anti-aliased",
        "palette",
        "palette-inverted",
        "red",
        "rgba",
        "16bit",
        "16bit-0-1",
        "1",
    ],
)
def test_mask_files_follow_the_documented_rule(tmp_path: Path, image: Image.Image, expected: list[bool]) -> None:
    mask = read_mask(save(tmp_path, "mask.png", image))
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask[0], expected)


def test_mask_arrays_and_mask_files_agree(tmp_path: Path) -> None:
    path = save(tmp_path, "mask.png", Image.fromarray(ANTI_ALIASED))
    np.testing.assert_array_equal(masks_for([None], [ANTI_ALIASED])[0].numpy(), read_mask(path))
    np.testing.assert_array_equal(masks_for([None], [path])[0].numpy(), read_mask(path))
    np.testing.assert_array_equal(masks_for([None], [np.array([[0.0, 0.4, 0.6, 1.0]])])[0].numpy()[0], [0, 0, 1, 1])
    with pytest.raises(BGADError, match="2-D"):
        masks_for([None], [np.zeros((2, 2, 3), np.uint8)])


def brute_force_rule(values: np.ndarray, half: int) -> np.ndarray:
    """The documented rule, pixel by pixel."""
    cut = 0 if values.max() <= half else half
    return np.array([[v > cut for v in row] for row in values.tolist()], dtype=bool)


@given(arrays(np.uint8, st.tuples(st.integers(1, 6), st.integers(1, 6))))
def test_binarize_mask_8_bit_matches_the_rule(values: np.ndarray) -> None:
    np.testing.assert_array_equal(binarize_mask(values), brute_force_rule(values, 127))


@given(arrays(np.uint16, st.tuples(st.integers(1, 6), st.integers(1, 6))))
def test_binarize_mask_16_bit_matches_the_rule(values: np.ndarray) -> None:
    np.testing.assert_array_equal(binarize_mask(values), brute_force_rule(values, 32767))


@settings(max_examples=40, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 8), st.integers(1, 8))), st.integers(1, 255))
def test_binary_masks_of_any_value_read_back_exactly(
    tmp_path_factory: pytest.TempPathFactory, binary: np.ndarray, value: int
) -> None:
    path = tmp_path_factory.getbasetemp() / "binary_mask.png"
    Image.fromarray(binary.astype(np.uint8) * value).save(path)
    np.testing.assert_array_equal(read_mask(path), binary)
