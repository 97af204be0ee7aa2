"""Progress of long work: a tqdm bar on a terminal; in a log file, lines.

When stderr is not a terminal (a log file, a CI job, a pipe), tqdm's carriage-return updates pile up into
megabytes, so :func:`progress` gives a :class:`LineProgress` instead: one line when a stage ends, and one line per
:meth:`LineProgress.log` call (training logs each meta-epoch).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm


class LineProgress:
    """The part of tqdm's interface bgad uses, writing whole lines to stderr."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
    ):
        self.iterable, self.desc, self.unit = iterable, desc, unit
        self.total = total if total is not None or iterable is None else _length(iterable)
        self.n, self.postfix, self._start, self._closed = initial, "", time.perf_counter(), False

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update()
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def log(self, message: str) -> None:
        print(f"bgad: {self.desc}: {message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        seconds = time.perf_counter() - self._start
        done = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        self.log(f"{done} {self.unit} in {seconds:.1f} s" + (f" ({self.postfix})" if self.postfix else ""))


Bar = tqdm | LineProgress


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str,
    unit: str = "it",
    total: int | None = None,
    initial: int = 0,
    disable: bool = False,
) -> Bar:
    """A progress bar for a terminal, lines for a log file (see the module docstring), nothing when ``disable``."""
    if disable or sys.stderr.isatty():
        return tqdm(iterable, desc=desc, unit=unit, total=total, initial=initial, disable=disable, mininterval=1)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial)


def log_line(bar: Bar, message: str) -> None:
    """A line for the log (one per meta-epoch, say); on a terminal the bar already shows it."""
    if isinstance(bar, LineProgress):
        bar.log(message)


def _length(iterable: Iterable[Any]) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None
