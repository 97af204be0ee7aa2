"""Every exception bgad raises on purpose. A :class:`BGADError` is a problem a user can fix (a bad path, an unreadable
image, a bad option): the command line prints its message as one line and exits non-zero."""

from __future__ import annotations

from collections.abc import Sequence


class BGADError(ValueError):
    """A user-facing error; the command line prints its message as one line and exits non-zero."""


class DatasetError(BGADError):
    """A dataset failed its checks; ``problems`` holds one line per problem."""

    def __init__(self, problems: Sequence[str]):
        self.problems = tuple(problems)
        super().__init__(f"the dataset has {len(self.problems)} problem(s); `bgad check` lists them")


class NotFittedError(BGADError, AttributeError):
    """The detector was used before ``fit`` or ``load``."""


class TrainingInterrupted(Exception):
    """Ctrl-C stopped a fit during training: its partial folder can be resumed from the last checkpoint."""
