"""Reading images and masks as they come, and fitting them to the model's square input.

Images: PNG, JPEG, BMP and TIFF files (:data:`IMAGE_FORMATS`: no other decoder runs) and arrays become 8-bit RGB,
files turned upright by their EXIF orientation; see :func:`read_image` for how each kind is mapped.

Masks, one rule for files and arrays (:func:`read_mask`, :func:`binarize_mask`):

* palette ("P") files: palette index > 0 is defect (labelling tools such as labelme write index 0 = background);
* bilevel ("1") files and boolean arrays: as they are;
* anything else: the numeric values, with alpha dropped and the maximum over the colour channels (so a red
  defect on black works). A pixel is defect when its value is above half the type's range (127 for 8-bit,
  32767 for 16-bit, 0.5 for floats, which are taken as [0, 1]), so anti-aliased 0..255 edges are cut at 127 --
  except when the mask's maximum is at most half the range (0/1 masks, small class-index masks such as VisA's):
  then every nonzero pixel is defect.

Square input (``resize``, :attr:`bgad.config.ModelConfig.resize`): ``"stretch"`` resizes to ``size x size``
ignoring the aspect ratio; ``"pad"`` scales the long side to ``size`` and pads the short side symmetrically
(letterbox). :func:`content_box` says where the image lies on that canvas; pad pixels are never scored.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from ..config import RESIZE_MODES
from ..errors import BGADError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# The only decoders bgad runs, whatever a file's name says: PIL would otherwise also decode EPS (through
# Ghostscript), DDS, GIF, JPEG 2000, PCX, PPM, QOI, SGI, TGA, WEBP and more, each one more parser exposed to uploads.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")


def _open(source: Path | BinaryIO, name: str | Path, max_pixels: int | None = None) -> Image.Image:
    """Decode a file or a byte stream in one of :data:`IMAGE_FORMATS` (its size checked from the header first,
    before any pixel is decoded)."""
    try:
        with Image.open(source, formats=IMAGE_FORMATS) as image:
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise BGADError(f"image {name} is {image.width}x{image.height}: over the {max_pixels} pixels allowed")
            image.load()
            return ImageOps.exif_transpose(image)
    except FileNotFoundError:
        raise BGADError(f"image not found: {name}") from None
    except Image.DecompressionBombError:  # neither OSError nor ValueError; its message is PIL's, without the name
        raise BGADError(f"image {name} is too large to read safely (over {Image.MAX_IMAGE_PIXELS} pixels)") from None
    except UnidentifiedImageError:  # its message names a path or a BytesIO object: the name says it better
        raise BGADError(f"cannot read image {name}: not a PNG, JPEG, BMP or TIFF image") from None
    except (OSError, ValueError) as err:
        raise BGADError(f"cannot read image {name}: {err}") from None


def decode_image(data: bytes, name: str = "upload", *, max_pixels: int | None = None) -> Image.Image:
    """An encoded image (PNG, JPEG, BMP or TIFF) held in memory, as 8-bit RGB (see :func:`read_image`)."""
    if not data:
        raise BGADError(f"image {name} is empty")
    return read_image(_open(io.BytesIO(data), name, max_pixels))


ImageSource = str | Path | Image.Image | np.ndarray

Color = tuple[int, int, int]
BLACK: Color = (0, 0, 0)


def read_image(source: ImageSource) -> Image.Image:
    """Read an image (a path, a PIL image or an array) as 8-bit RGB.

    Files are turned upright by their EXIF orientation (PIL images are taken as they are). Grayscale, palette,
    bilevel and CMYK go through PIL's ``convert``; grayscale is replicated to three channels, as the reference
    does. Alpha is dropped, not composited: transparent pixels keep their colour. 16-bit (and 32-bit integer)
    values are scaled by the full 16-bit range (``value >> 8``), so 12-bit data stored in 16-bit files looks dark;
    32-bit floats are taken as 0..255 and clipped. Arrays: uint8 or uint16, (H, W), (H, W, 3) or (H, W, 4).
    """
    if isinstance(source, np.ndarray):
        image = _from_array(source)
    elif isinstance(source, Image.Image):
        image = source
    else:
        image = _open(Path(source), source)
    if image.mode.startswith("I"):  # "I;16", "I;16B", "I;16L", "I": keep the top 8 of 16 bits
        image = Image.fromarray((np.asarray(image).clip(0, 65535) >> 8).astype(np.uint8))
    elif image.mode == "F":
        image = Image.fromarray(np.asarray(image).clip(0, 255).astype(np.uint8))
    return image.convert("RGB")


def _from_array(array: np.ndarray) -> Image.Image:
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    try:
        return Image.fromarray(array)
    except TypeError:
        raise BGADError(
            f"cannot read an image array of dtype {array.dtype} and shape {array.shape}; "
            "use uint8 or uint16 of shape (H, W), (H, W, 3) or (H, W, 4)"
        ) from None


def image_shape(source: ImageSource) -> tuple[int, int]:
    """(height, width) of an image as :func:`read_image` gives it (after the EXIF rotation)."""
    image = read_image(source)
    return image.height, image.width


def read_mask(path: str | Path) -> np.ndarray:
    """Read a ground-truth mask at its own resolution as a boolean array, by the rule in the module docstring:
    palette index > 0; bilevel as is; else values above half the type's range (any nonzero value when the
    mask's maximum is at most half the range), alpha dropped, maximum over the colour channels."""
    image = _open(Path(path), path)
    if image.mode == "P":
        return np.asarray(image) > 0
    if image.mode == "1":
        return np.array(image)  # a writable copy, as every other branch gives
    if image.mode in ("L", "F") or image.mode.startswith("I"):
        return binarize_mask(np.asarray(image))
    return binarize_mask(np.asarray(image.convert("RGB")).max(axis=2))


def binarize_mask(values: np.ndarray) -> np.ndarray:
    """Defect pixels of a mask array: booleans as they are; numbers above half the type's range (255 for 8-bit,
    65535 for 16-bit, 1 for floats; other integer types count as 8-bit when their values fit), or every nonzero
    value when the maximum is at most half the range (0/1 and class-index masks)."""
    if values.dtype == bool:
        return values
    half = _full_range(values) / 2
    return values > (0 if values.max(initial=0) <= half else half)


def _full_range(values: np.ndarray) -> float:
    if values.dtype.kind == "f":
        return 1.0
    if values.dtype.itemsize == 1 or (values.dtype.itemsize > 2 and values.max(initial=0) <= 255):
        return 255.0
    return 65535.0


def content_box(height: int, width: int, size: int, resize: str = "stretch") -> tuple[int, int, int, int]:
    """Where an (height, width) image lies on the ``size x size`` model input: ``(top, left, box_h, box_w)``."""
    if resize not in RESIZE_MODES:
        raise BGADError(f"unknown resize {resize!r}; use one of {', '.join(RESIZE_MODES)}")
    if resize == "stretch":
        return 0, 0, size, size
    scale = size / max(height, width)
    box_h, box_w = max(1, round(height * scale)), max(1, round(width * scale))
    return (size - box_h) // 2, (size - box_w) // 2, box_h, box_w


def to_canvas(image: Image.Image, size: int, resize: str = "stretch", fill: Color = BLACK) -> Image.Image:
    """The RGB image as the model sees it: resized (Lanczos) into its content box, padded with ``fill`` (models pad
    with their backbone's :attr:`~bgad.method.backbones.FeatureExtractor.pad_color`)."""
    top, left, box_h, box_w = content_box(image.height, image.width, size, resize)
    resized = image.resize((box_w, box_h), Image.Resampling.LANCZOS)
    if (box_h, box_w) == (size, size):
        return resized
    canvas = Image.new("RGB", (size, size), fill)
    canvas.paste(resized, (left, top))
    return canvas


def image_to_tensor(image: Image.Image, size: int, resize: str = "stretch", fill: Color = BLACK) -> Tensor:
    """:func:`to_canvas` as a (3, size, size) tensor in [0, 1]."""
    canvas = np.asarray(to_canvas(image, size, resize, fill)).copy()
    return torch.from_numpy(canvas).permute(2, 0, 1).float().div_(255)


def mask_to_tensor(mask: np.ndarray, size: int, resize: str = "stretch") -> Tensor:
    """A boolean mask on the model input (the evaluation ground truth): nearest-neighbour resize into the content
    box of an image of the mask's shape; pad pixels are False."""
    top, left, box_h, box_w = content_box(*mask.shape, size, resize)
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((box_w, box_h), Image.Resampling.NEAREST)
    return _on_canvas(torch.from_numpy(np.asarray(resized) > 127), top, left, size)


def square_mask(mask: Tensor, resize: str = "stretch") -> Tensor:
    """A full-resolution mask laid out as its image is on the model input, at the mask's own scale (for labelling
    feature cells): unchanged with ``"stretch"``, padded with False to a ``max(H, W)`` square with ``"pad"``."""
    if resize == "stretch":
        return mask
    side = max(mask.shape)
    top, left, _, _ = content_box(*mask.shape, side, resize)
    return _on_canvas(mask, top, left, side)


def content_masks(shapes: Iterable[tuple[int, int]], size: int, resize: str = "stretch") -> Tensor | None:
    """(N, size, size) boolean masks of the content pixels of images of ``shapes`` on the model input; None with
    ``"stretch"`` (every pixel is content), in which case ``shapes`` is not consumed (it may be a lazy generator)."""
    if resize == "stretch":
        return None
    boxes = [content_box(height, width, size, resize) for height, width in shapes]
    return torch.stack([_on_canvas(torch.ones(h, w, dtype=torch.bool), top, left, size) for top, left, h, w in boxes])


def _on_canvas(content: Tensor, top: int, left: int, size: int) -> Tensor:
    canvas = content.new_zeros(size, size)
    canvas[top : top + content.shape[0], left : left + content.shape[1]] = content
    return canvas
