"""What a dataset is once loaded (:class:`Category`) and the few-shot protocol: which defective images become
known anomalies (:class:`Split`). The loaders of each layout (MVTec AD, BTAD, VisA, plain folders, a CSV manifest)
live in :mod:`bgad.data.layouts`."""

from __future__ import annotations

import hashlib
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import TrainConfig, fold_of
from ..errors import BGADError

GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """One image: its path, its defect type (``"good"`` for normal images) and its mask path, if defective.

    A defective image without a mask is an image-level-only sample: it counts for image metrics, not for pixel
    metrics, and is never picked as a known anomaly.
    """

    path: Path
    defect_type: str = GOOD
    mask_path: Path | None = None

    @property
    def is_anomalous(self) -> bool:
        return self.defect_type != GOOD

    @property
    def has_pixel_labels(self) -> bool:
        """True for normal images and for defective images with a mask."""
        return not self.is_anomalous or self.mask_path is not None


@dataclass(frozen=True)
class Category:
    """A dataset of one part: its training normals and its test images, in sorted order.

    ``known`` holds defective images that the dataset itself assigns to training (a manifest's ``train``
    anomalies); when empty, known anomalies are drawn from the test defects (:func:`make_split`).
    ``problems`` lists what the loader found wrong without stopping (e.g. a defect image without a mask), for
    :func:`bgad.data.checks.check_dataset` to report with everything else.
    """

    name: str
    root: Path
    train: tuple[Sample, ...]
    test: tuple[Sample, ...]
    known: tuple[Sample, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def defects(self) -> tuple[Sample, ...]:
        """Test defects with a mask: the pool known anomalies are drawn from."""
        return tuple(s for s in self.test if s.is_anomalous and s.mask_path is not None)

    def relative(self, path: Path) -> str:
        """``path`` relative to the dataset folder, with '/' separators (how run folders record images);
        absolute if it lies elsewhere."""
        path, root = path.absolute(), self.root.absolute()
        return (path.relative_to(root) if path.is_relative_to(root) else path).as_posix()


def content_hash(path: Path) -> str:
    """SHA-1 of a file's bytes, read in bounded chunks; only regular files (a device such as ``/dev/zero`` or a
    FIFO would never end), else a BGADError."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise BGADError(f"cannot read image {path}: not a regular file")
        digest = hashlib.sha1()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError as err:
        raise BGADError(f"cannot read image {path}: {err.strerror or err}") from None
    return digest.hexdigest()


def _category_rng(category: str, seed: int) -> np.random.Generator:
    # Seeded by (category, seed) only, so a category's selection never depends on what else runs.
    return np.random.default_rng([seed, zlib.crc32(category.encode())])


@dataclass(frozen=True)
class Split:
    """A dataset divided for one fit: training normals, the known anomalies trained with, and the evaluation images
    (the test images other than the known anomalies).

    Made once (:func:`make_split`, through :func:`bgad.data.checks.check_dataset`) and passed on to training,
    evaluation, the run folder, the report and the benchmark's floors, which therefore all see the same images.
    """

    category: Category
    known: tuple[Sample, ...]

    @property
    def train(self) -> tuple[Sample, ...]:
        return self.category.train

    @property
    def evaluation(self) -> tuple[Sample, ...]:
        used = {s.path for s in self.known}
        return tuple(s for s in self.category.test if s.path not in used)

    @property
    def known_names(self) -> list[str]:
        """The known anomalies as a run folder records them (see :meth:`Category.relative`)."""
        return [self.category.relative(s.path) for s in self.known]

    @property
    def known_types(self) -> list[str]:
        return sorted({s.defect_type for s in self.known})


def make_split(category: Category, train: TrainConfig) -> Split:
    """Pick ``train.num_anomalies`` defective test images to train with, by ``train.anomaly_sampling``; the result
    depends only on (category name, ``train.seed``).

    A dataset that assigns its own training anomalies (``category.known``) gets exactly those, whatever the number.

    ``"stratified"`` (the reference's choice): each of the T defect types gives ``n // T`` images (all it has,
    if fewer), the rest come from the leftovers of all types. ``"random"``: uniformly from all defects (the DRA
    protocol). ``"type:NAME"``: all from defect type NAME — the hard setting, where the other types stay unseen.
    ``n = -1`` takes every defect (of the type). ``"fold:K/N"``: every defect outside fold K of :func:`folds`.
    """
    if category.known:
        return Split(category, category.known)
    fold = fold_of(train.anomaly_sampling)
    if fold is not None:
        held_out = set(folds(category, fold[1], seed=train.seed)[fold[0]])
        return Split(category, tuple(s for s in category.defects if s not in held_out))
    return Split(category, _select(category, train.num_anomalies, train.anomaly_sampling, train.seed))


def folds(category: Category, n: int, *, seed: int) -> list[tuple[Sample, ...]]:
    """The defects (with masks) dealt into ``n`` folds of near-equal size, each defect type spread over the folds
    (seeded by category name and seed, like the known anomalies)."""
    rng = _category_rng(category.name, seed)
    dealt: list[list[Sample]] = [[] for _ in range(n)]
    position = 0
    for defect_type in sorted({s.defect_type for s in category.defects}):
        pool = [s for s in category.defects if s.defect_type == defect_type]
        for index in rng.permutation(len(pool)):
            dealt[position % n].append(pool[index])
            position += 1
    return [tuple(sorted(fold, key=lambda s: s.path)) for fold in dealt]


def _select(category: Category, n: int, sampling: str, seed: int) -> tuple[Sample, ...]:
    defects = category.defects
    rng = _category_rng(category.name, seed)
    if sampling.startswith("type:"):
        seen = sampling.removeprefix("type:")
        types = sorted({s.defect_type for s in defects})
        if seen not in types:
            raise BGADError(f"defect type {seen!r} not in category {category.name} (types: {', '.join(types)})")
        defects = tuple(s for s in defects if s.defect_type == seen)
    if n == -1:
        n = len(defects)
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
