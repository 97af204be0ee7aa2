"""Text cells of the CSV files bgad writes (``scores.csv``, ``review.csv``), safe to open in a spreadsheet."""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(text: str) -> str:
    """``text`` with a leading ``'`` when a spreadsheet would run it as a formula (an image named
    ``=HYPERLINK(...).png``): OWASP's rule against CSV injection. The page's CSV download applies the same rule."""
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text
