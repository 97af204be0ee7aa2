"""Reading images and masks from disk, with one clear error per unreadable file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from .errors import BGADError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image)
    except FileNotFoundError:
        raise BGADError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise BGADError(f"cannot read image {path}: {err}") from None


ImageSource = str | Path | Image.Image | np.ndarray


def read_image(source: ImageSource) -> Image.Image:
    """Read an image (a path, a PIL image or an (H, W[, C]) uint8 array) as 8-bit RGB.

    Grayscale is replicated to three channels, as the reference does.
    """
    if isinstance(source, np.ndarray):
        image = Image.fromarray(source)
    elif isinstance(source, Image.Image):
        image = source
    else:
        image = _open(Path(source))
    if image.mode in ("I;16", "I;16B", "I"):  # 16-bit grayscale: keep the top 8 bits
        image = Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8))
    return image.convert("RGB")


def read_mask(path: str | Path) -> np.ndarray:
    """Read a ground-truth mask at its own resolution as a boolean array (defect = pixel value > half range)."""
    mask = np.asarray(_open(Path(path)).convert("L"))
    return mask > 127


def image_to_tensor(image: Image.Image, size: int) -> Tensor:
    """Resize to ``size x size`` (Lanczos, aspect ratio not kept) and return a (3, size, size) tensor in [0, 1]."""
    resized = image.resize((size, size), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1).float().div_(255)


def mask_to_tensor(mask: np.ndarray, size: int) -> Tensor:
    """Nearest-neighbour resize of a boolean mask to ``size x size`` (the evaluation ground truth)."""
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)
    return torch.from_numpy(np.asarray(resized) > 127)
