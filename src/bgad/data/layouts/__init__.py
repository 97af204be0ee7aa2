"""Dataset loaders, one layout per module, behind one registry.

Every loader returns a :class:`bgad.data.samples.Category`. A :class:`DatasetSpec` names a layout and its loader's
keyword arguments; run folders store it so that ``bgad test`` and ``bgad fit --resume`` load the same data again.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...errors import BGADError
from ..samples import Category
from .btad import load_btad
from .folder import labelled_defects, load_folders
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


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset is and how it is laid out: a layout of :data:`LAYOUTS` and its loader's keyword arguments
    (JSON values: paths as strings).

    >>> DatasetSpec("mvtec", {"data_root": "/data/mvtec_ad", "category": "bottle"}).to_dict()
    {'layout': 'mvtec', 'data_root': '/data/mvtec_ad', 'category': 'bottle'}
    """

    layout: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise BGADError(f"unknown dataset layout {self.layout!r}; use one of {', '.join(LAYOUTS)}")
        accepted = inspect.signature(LAYOUTS[self.layout]).parameters
        unknown = sorted(set(self.options) - set(accepted))
        if unknown:
            raise BGADError(f"unknown option(s) {', '.join(unknown)} for dataset layout {self.layout!r}")

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> DatasetSpec:
        """The spec a run folder stored: ``{"layout": NAME, **loader keyword arguments}``."""
        options = dict(spec)
        return cls(options.pop("layout", None), options)

    def to_dict(self) -> dict[str, Any]:
        return {"layout": self.layout, **self.options}

    def load(self) -> Category:
        return LAYOUTS[self.layout](**self.options)


__all__ = [
    "LAYOUTS",
    "DatasetSpec",
    "labelled_defects",
    "load_btad",
    "load_folders",
    "load_manifest",
    "load_mvtec",
    "load_visa",
]
