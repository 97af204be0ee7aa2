"""The JSON descriptions that travel with bgad's tensor files (model files, training checkpoints): read and checked in
one place, below both; and the one way bgad replaces a file atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from .._version import __version__
from ..errors import BGADError


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


def write_atomic(path: Path, write: bytes | Callable[[Path], object], *, temporary: Path | None = None) -> None:
    """Write ``path`` so that readers see the old file or the whole new one, even after a crash or a kill: the
    bytes (or ``write(temporary_path)``) go to a temporary file beside it (``temporary``, default ``path.tmp``),
    which is flushed to disk and renamed over ``path``; the rename is made durable too. On failure the temporary
    file is removed and ``path`` is left as it was."""
    temporary = temporary or path.with_name(path.name + ".tmp")
    try:
        if isinstance(write, bytes):
            temporary.write_bytes(write)
        else:
            write(temporary)
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
        _fsync_folder(path.parent)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: object, *, indent: int = 2, temporary: Path | None = None) -> None:
    """Write ``data`` as indented JSON to ``path`` with :func:`write_atomic`."""
    write_atomic(path, (json.dumps(data, indent=indent) + "\n").encode(), temporary=temporary)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX: the rename lives in the folder's entry, not in the file)."""
    if os.name != "posix":
        return  # Windows cannot open a folder for fsync; NTFS journals the rename
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
