"""The JSON descriptions that travel with bgad's tensor files (model files, training checkpoints): read and checked in
one place, below both."""

from __future__ import annotations

import json
from pathlib import Path

from ._version import __version__
from .errors import BGADError


def read_description(json_path: Path, format_name: str, format_version: int, kind: str) -> dict:
    """The JSON description of a bgad file of ``kind`` (model, training checkpoint), checked to be one and to have
    the format version this bgad reads; anything else is a one-line BGADError."""
    try:
        description = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BGADError(f"{json_path} is damaged, not valid JSON: {err}") from None
    if not isinstance(description, dict) or description.get("format") != format_name:
        raise BGADError(f"{json_path} is not a bgad {kind} description")
    if description.get("format_version") != format_version:
        raise BGADError(
            f"{json_path} has {kind} format version {description.get('format_version')!r}; "
            f"this bgad {__version__} reads version {format_version}"
        )
    return description
