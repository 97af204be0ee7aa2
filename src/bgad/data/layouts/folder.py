"""Plain folders: a folder of good images, folders of defects, masks with other names somewhere else.

``--defect-dir`` may be given several times; a defect folder whose images sit in subfolders gives one defect type
per subfolder, otherwise the folder's name is the type. Masks are searched in the ``--mask-dir`` folders and in
the defect folders themselves (``a.png`` beside ``a_mask.png``), see :mod:`bgad.data.layouts.files`. Without
``--test-normal-dir``, a seeded fraction of the good images is held out for evaluation.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...errors import BGADError
from ..samples import GOOD, Category, Sample
from .files import MaskIndex, check_unmasked, existing_folder, image_files, mask_like


def _images_of(folder: Path, what: str) -> list[Path]:
    images = image_files(existing_folder(folder, what))
    if not images:
        raise BGADError(f"no images in {what} {folder}")
    return images


def _defect_images(folder: Path) -> list[tuple[Path, str]]:
    """(image, type) pairs of one defect folder: subfolders are types, else the folder itself is one."""
    existing_folder(folder, "defect folder")
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and image_files(p))
    groups = [(sub, sub.name) for sub in subfolders] or [(folder, folder.name)]
    for group, defect_type in groups:
        if defect_type == GOOD:
            raise BGADError(
                f"defect folder {group} is named {GOOD!r}, the name reserved for normal images: rename it or give it "
                "as --normal-dir / --test-normal-dir"
            )
    pairs = []
    for group, defect_type in groups:
        files = image_files(group)
        masks = mask_like(files)
        pairs += [(p, defect_type) for p in files if p not in masks]
    if not pairs:
        raise BGADError(f"no images in defect folder {folder}")
    return pairs


def held_out_normals(normals: Sequence[Path], ratio: float, *, name: str) -> tuple[set[Path], set[Path]]:
    """Split good images into (train, test) with a permutation seeded by the dataset's name only, so every
    training seed is evaluated on the same images; ``ratio`` of them (rounded, at least one when ``ratio > 0``,
    never all) go to test."""
    if not 0 <= ratio < 1:
        raise BGADError(f"test-normal ratio must be in [0, 1), got {ratio}")
    n_test = min(max(round(ratio * len(normals)), 1 if ratio > 0 else 0), len(normals) - 1)
    order = np.random.default_rng(zlib.crc32(name.encode())).permutation(len(normals))
    test = {normals[i] for i in order[:n_test]}
    return set(normals) - test, test


def labelled_defects(
    defect_dirs: Sequence[str | Path], mask_dirs: Sequence[str | Path] = (), *, unmasked: str = "error"
) -> tuple[list[Sample], list[str]]:
    """The defect images of ``defect_dirs`` (subfolders are defect types) with their masks, matched as
    :func:`load_folders` matches them, and one problem line per defect without a mask (or with several)."""
    check_unmasked(unmasked)
    defects = [pair for folder in defect_dirs for pair in _defect_images(Path(folder))]
    return _with_masks(defects, mask_dirs, unmasked, other_images=[])


def _with_masks(
    defects: list[tuple[Path, str]], mask_dirs: Sequence[str | Path], unmasked: str, *, other_images: list[Path]
) -> tuple[list[Sample], list[str]]:
    for folder in mask_dirs:
        existing_folder(folder, "mask folder")
    index = MaskIndex(
        [*map(Path, mask_dirs), *(p.parent for p, _ in defects)], images=[*other_images, *(p for p, _ in defects)]
    )
    return index.defect_samples(defects, unmasked=unmasked)


def load_folders(
    normal_dir: str | Path,
    defect_dirs: Sequence[str | Path] = (),
    mask_dirs: Sequence[str | Path] = (),
    test_normal_dirs: Sequence[str | Path] = (),
    *,
    test_normal_ratio: float = 0.2,
    unmasked: str = "error",
) -> Category:
    """Index a dataset given as folders (see the module docstring). Its name is the folders' common parent's."""
    check_unmasked(unmasked)
    normal_dir = Path(normal_dir)
    normals = _images_of(normal_dir, "normal folder")
    defects = [pair for folder in defect_dirs for pair in _defect_images(Path(folder))]
    test_normals = [p for folder in test_normal_dirs for p in _images_of(Path(folder), "test-normal folder")]
    folders = [normal_dir, *map(Path, defect_dirs), *map(Path, mask_dirs), *map(Path, test_normal_dirs)]
    root = Path(os.path.commonpath([f.absolute() for f in folders]))
    name = root.name or "dataset"
    if test_normals:
        train, held_out = set(normals), set(test_normals)
    else:
        train, held_out = held_out_normals(normals, test_normal_ratio, name=name)
    defect_samples, problems = _with_masks(defects, mask_dirs, unmasked, other_images=[*normals, *test_normals])
    test = sorted([Sample(p) for p in held_out] + defect_samples, key=lambda s: s.path)
    return Category(
        name,
        root,
        tuple(Sample(p) for p in sorted(train)),
        tuple(test),
        problems=tuple(problems),
    )
