"""An exclusive lock per run folder, so that two processes never fit or resume into the same output at once.

The lock is ``.<name>.lock`` beside the run folder, held with ``flock`` (POSIX) or ``msvcrt.locking`` (Windows)
for the whole fit or resume; the operating system releases it when the process ends, however it ends. The file
records the holder's process id for the message a second process gets.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from ..errors import BGADError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt


def lock_path(output: Path) -> Path:
    return output.parent / f".{output.name}.lock"


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


@contextmanager
def run_lock(output: Path) -> Iterator[None]:
    """Hold the exclusive lock of ``output`` (its parent must exist); a BGADError if another process holds it."""
    path = lock_path(output)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise BGADError(f"cannot create the lock file {path}: {err.strerror}") from None
        if not _try_lock(fd):
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise BGADError(f"{output} is being written by process {holder} (lock {path}); wait for it to finish")
        # The holder before us may have deleted the file after we opened it: then our lock guards nothing.
        if os.path.exists(path) and os.path.samestat(os.fstat(fd), os.stat(path)):
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        if fcntl is not None:
            os.unlink(path)  # while still holding the lock: see the samestat check above
            os.close(fd)
        else:  # Windows cannot delete an open file; a leftover lock file is unlocked and harmless
            os.close(fd)
            with suppress(OSError):
                os.unlink(path)
