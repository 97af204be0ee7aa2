"""Dataset loaders, one layout per module, behind one registry.

Every loader returns a :class:`bgad.data.Category`. A dataset is described by a plain dict — its ``layout`` plus
the loader's keyword arguments — which run folders store so that ``bgad test`` and ``bgad fit --resume`` can
load the same data again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..data import Category
from ..errors import BGADError
from .btad import load_btad
from .folder import load_folders
from .manifest import load_manifest
from .mvtec import load_mvtec
from .visa import load_visa

LAYOUTS: dict[str, Callable[..., Category]] = {
    "mvtec": load_mvtec,
    "btad": load_btad,
    "visa": load_visa,
    "folders": load_folders,
    "manifest": load_manifest,
}


def load_dataset(spec: dict[str, Any]) -> Category:
    """Load the dataset ``spec`` describes: ``{"layout": NAME, **loader keyword arguments}``."""
    options = dict(spec)
    layout = options.pop("layout", None)
    if layout not in LAYOUTS:
        raise BGADError(f"unknown dataset layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    return LAYOUTS[layout](**options)


__all__ = ["LAYOUTS", "load_btad", "load_dataset", "load_folders", "load_manifest", "load_mvtec", "load_visa"]
