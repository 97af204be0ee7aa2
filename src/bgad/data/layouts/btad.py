"""BTAD (beanTech Anomaly Detection): ``CATEGORY/train/ok``, ``test/ok``, ``test/ko`` and ``ground_truth/ko``,
with masks named like their images (sometimes with another extension). Defects get the type ``ko``."""

from __future__ import annotations

from pathlib import Path

from ..samples import Category
from .mvtec import split_folders


def load_btad(data_root: str | Path, category: str, *, unmasked: str = "error") -> Category:
    """Index one BTAD category (``01``, ``02`` or ``03``)."""
    return split_folders(data_root, category, normal="ok", unmasked=unmasked, layout="BTAD")
