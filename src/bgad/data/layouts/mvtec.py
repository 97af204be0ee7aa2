"""MVTec AD: ``CATEGORY/train/good``, ``CATEGORY/test/<type>`` (``good`` = normal) and
``CATEGORY/ground_truth/<type>/<stem>_mask.png``. The default layout of ``bgad fit --data-root``."""

from __future__ import annotations

from pathlib import Path

from ...errors import BGADError
from ..samples import GOOD, Category, Sample
from .files import MaskIndex, check_unmasked, existing_folder, image_files


def category_folder(data_root: str | Path, category: str) -> Path:
    """``data_root/category``, or an error listing the categories that are there."""
    root = existing_folder(data_root, "data root")
    folder = root / category
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise BGADError(f"category folder not found: {folder} (found: {', '.join(found) or 'nothing'})")
    return folder


def split_folders(
    data_root: str | Path, category: str, *, normal: str, unmasked: str = "error", layout: str
) -> Category:
    """A category in MVTec's folder scheme, with ``normal`` as the name of the normal folders (MVTec: ``good``,
    BTAD: ``ok``); masks are matched by stem under ``ground_truth`` (see :mod:`bgad.data.layouts.files`)."""
    check_unmasked(unmasked)
    root = category_folder(data_root, category)
    train_dir = root / "train" / normal
    if not train_dir.is_dir():
        raise BGADError(f"no training images: {train_dir} is missing (is this the {layout} layout?)")
    train = tuple(Sample(p) for p in image_files(train_dir))
    if not train:
        raise BGADError(f"no images in {train_dir}")
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise BGADError(f"no test images: {test_dir} is missing")
    type_dirs = sorted(p for p in test_dir.iterdir() if p.is_dir())
    good = [Sample(p) for d in type_dirs if d.name == normal for p in image_files(d)]
    defects = [(p, d.name) for d in type_dirs if d.name != normal for p in image_files(d)]
    masks = MaskIndex([root / "ground_truth"] if (root / "ground_truth").is_dir() else [])
    defect_samples, problems = masks.defect_samples(defects, unmasked=unmasked)
    test = sorted(good + defect_samples, key=lambda s: s.path)
    return Category(category, root, train, tuple(test), problems=tuple(problems))


def load_mvtec(data_root: str | Path, category: str, *, unmasked: str = "error") -> Category:
    """Index one MVTec-AD-layout category."""
    return split_folders(data_root, category, normal=GOOD, unmasked=unmasked, layout="MVTec AD")
