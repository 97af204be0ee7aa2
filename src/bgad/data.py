"""The MVTec AD folder layout and the few-shot protocol: which defective images become known anomalies.

Layout: ``CATEGORY/train/good``, ``CATEGORY/test/<type>`` (``good`` for normal images) and
``CATEGORY/ground_truth/<type>/<stem>_mask.png``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BGADError
from .images import IMAGE_SUFFIXES

GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """One image: its path, its defect type (``"good"`` for normal images) and its mask path, if defective."""

    path: Path
    defect_type: str = GOOD
    mask_path: Path | None = None

    @property
    def is_anomalous(self) -> bool:
        return self.defect_type != GOOD


@dataclass(frozen=True)
class Category:
    """A category's training normals and its test images, in sorted order."""

    name: str
    root: Path
    train: tuple[Sample, ...]
    test: tuple[Sample, ...]

    @property
    def defects(self) -> tuple[Sample, ...]:
        return tuple(s for s in self.test if s.is_anomalous)

    def relative(self, path: Path) -> str:
        """``path`` relative to the category folder, with '/' separators (how run folders record images)."""
        return path.relative_to(self.root).as_posix()


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_mvtec_category(data_root: str | Path, category: str) -> Category:
    """Index one MVTec-layout category, checking that folders exist and every defect image has its mask."""
    root = Path(data_root) / category
    if not Path(data_root).is_dir():
        raise BGADError(f"data root not found: {data_root}")
    if not root.is_dir():
        found = sorted(p.name for p in Path(data_root).iterdir() if p.is_dir())
        raise BGADError(f"category folder not found: {root} (found: {', '.join(found) or 'nothing'})")
    train_dir = root / "train" / GOOD
    if not train_dir.is_dir():
        raise BGADError(f"no training images: {train_dir} is missing")
    train = tuple(Sample(p) for p in _image_files(train_dir))
    if not train:
        raise BGADError(f"no images in {train_dir}")
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise BGADError(f"no test images: {test_dir} is missing")
    test = []
    for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        for path in _image_files(type_dir):
            if type_dir.name == GOOD:
                test.append(Sample(path))
                continue
            mask = root / "ground_truth" / type_dir.name / f"{path.stem}_mask.png"
            if not mask.is_file():
                raise BGADError(f"defect image {path} has no mask (expected {mask})")
            test.append(Sample(path, type_dir.name, mask))
    return Category(category, root, train, tuple(test))


def _category_rng(category: str, seed: int) -> np.random.Generator:
    # Seeded by (category, seed) only, so a category's selection never depends on what else runs.
    return np.random.default_rng([seed, zlib.crc32(category.encode())])


def select_known_anomalies(
    category: Category, n: int, *, seed: int, sampling: str = "stratified"
) -> tuple[Sample, ...]:
    """Pick ``n`` defective test images to train with; the result depends only on (category name, seed).

    ``"stratified"`` (the reference's choice): each of the T defect types gives ``n // T`` images (all it has,
    if fewer), the rest come from the leftovers of all types. ``"random"``: uniformly from all defects (the DRA
    protocol). ``"type:NAME"``: all from defect type NAME — the hard setting, where the other types stay unseen.
    """
    defects = category.defects
    rng = _category_rng(category.name, seed)
    if sampling.startswith("type:"):
        seen = sampling.removeprefix("type:")
        types = sorted({s.defect_type for s in defects})
        if seen not in types:
            raise BGADError(f"defect type {seen!r} not in category {category.name} (types: {', '.join(types)})")
        defects = tuple(s for s in defects if s.defect_type == seen)
    elif sampling not in ("stratified", "random"):
        raise BGADError(f"unknown anomaly sampling {sampling!r}; use stratified, random or type:NAME")
    if n > len(defects):
        where = f"category {category.name}"
        if sampling.startswith("type:"):
            where = f"defect type {sampling.removeprefix('type:')} of {where}"
        raise BGADError(f"{n} known anomalies requested but {where} has only {len(defects)}")
    if sampling != "stratified":
        chosen = [defects[i] for i in rng.choice(len(defects), size=n, replace=False)]
        return tuple(sorted(chosen, key=lambda s: s.path))
    types = sorted({s.defect_type for s in defects})
    chosen, leftovers = [], []
    for defect_type in types:
        pool = [s for s in defects if s.defect_type == defect_type]
        order = rng.permutation(len(pool))
        take = n // len(types)
        chosen += [pool[i] for i in order[:take]]
        leftovers += [pool[i] for i in order[take:]]
    extra = rng.choice(len(leftovers), size=n - len(chosen), replace=False)
    chosen += [leftovers[i] for i in sorted(extra)]
    return tuple(sorted(chosen, key=lambda s: s.path))


def evaluation_samples(category: Category, known: tuple[Sample, ...]) -> tuple[Sample, ...]:
    """The test images left for evaluation once the known anomalies are removed."""
    used = {s.path for s in known}
    return tuple(s for s in category.test if s.path not in used)
