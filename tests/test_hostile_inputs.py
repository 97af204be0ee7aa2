"""Inputs an attacker (or an unlucky line) would send: each gets one line naming the problem, or is made harmless,
never a traceback, a verdict from a model that cannot score, or a file of the user's overwritten
(docs/reliability.md lists them)."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bgad.data.images import decode_image, read_image, read_mask
from bgad.errors import BGADError

PROMISED = ["PNG", "JPEG", "BMP", "TIFF"]
REFUSED = ["GIF", "WEBP", "PPM", "TGA", "PCX", "SGI", "JPEG2000", "DDS", "EPS", "QOI"]


def _encoded(format_name: str) -> bytes:
    buffer = io.BytesIO()
    try:
        Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(buffer, format=format_name)
    except (KeyError, OSError) as err:  # a format this PIL cannot write (a missing codec)
        pytest.skip(f"PIL cannot write {format_name}: {err}")
    return buffer.getvalue()


@pytest.mark.parametrize("format_name", REFUSED)
def test_only_the_promised_formats_are_decoded(format_name: str, tmp_path: Path) -> None:
    data = _encoded(format_name)
    path = tmp_path / "looks_like.png"  # the name does not choose the decoder
    path.write_bytes(data)
    message = "not a PNG, JPEG, BMP or TIFF image"
    with pytest.raises(BGADError, match=f"cannot read image upload.png: {message}$"):
        decode_image(data, "upload.png")  # the upload is named, not a BytesIO object
    with pytest.raises(BGADError, match=f"{message}$"):
        read_image(path)
    with pytest.raises(BGADError, match=f"{message}$"):
        read_mask(path)


@pytest.mark.parametrize("format_name", PROMISED)
def test_the_promised_formats_are_decoded(format_name: str) -> None:
    assert decode_image(_encoded(format_name), "upload").size == (40, 40)


def test_a_decompression_bomb_names_the_file_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(BGADError) as raised:
        decode_image(_encoded("PNG"), "big.png")
    assert str(raised.value).count("big.png") == 1
    assert "too large to read safely" in str(raised.value)
