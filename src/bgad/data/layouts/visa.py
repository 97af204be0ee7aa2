"""VisA (Zou et al., 2022): images and masks under ``ROOT/<object>/Data``, split by ``ROOT/split_csv/1cls.csv``
with columns ``object,split,label,image,mask`` (paths relative to ROOT; labels ``normal`` / ``anomaly``).

VisA's split file gives no defect types, so every defect has the type ``anomaly``. Its masks hold small class
indices, which :func:`bgad.data.images.read_mask` treats as defect wherever they are nonzero.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import BGADError
from ..samples import Category
from .files import existing_folder
from .manifest import build_category, read_rows

SPLIT_CSV = Path("split_csv") / "1cls.csv"


def load_visa(data_root: str | Path, category: str, *, unmasked: str = "error") -> Category:
    """Index one VisA object (e.g. ``candle``) from the official one-class split."""
    root = existing_folder(data_root, "data root")
    rows = read_rows(root / SPLIT_CSV, ("object", "split", "label", "image", "mask"))
    objects = sorted({row["object"] for _, row in rows})
    if category not in objects:
        raise BGADError(f"object {category!r} not in {root / SPLIT_CSV} (objects: {', '.join(objects) or 'none'})")
    renamed = [(line, {**row, "path": row["image"], "defect_type": "anomaly"}) for line, row in rows]
    return build_category(
        category, root, renamed, str(SPLIT_CSV), unmasked=unmasked, keep=lambda row: row["object"] == category
    )
