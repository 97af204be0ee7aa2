"""The one exception type for problems a user can fix: a bad path, an unreadable image, a bad option."""


class BGADError(ValueError):
    """A user-facing error; the command line prints its message as one line and exits non-zero."""
