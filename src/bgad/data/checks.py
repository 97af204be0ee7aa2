"""Checking a dataset before any work starts: every problem at once, one line each (``bgad check``, and the start
of ``bgad fit``).

Problems stop a fit: unreadable images or masks, masks whose size differs from their image, empty masks on
defect images, images smaller than the network's coarsest stride, the same image (by content) in training and
evaluation, fewer usable defects than requested, and what the loader reported (missing or ambiguous masks, bad
manifest rows). Notes do not: they say what the evaluation will lack (no held-out normals, no defects left).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from ..config import TrainConfig
from ..errors import BGADError, DatasetError
from ..runtime.progress import progress as progress_bar
from .images import read_image, read_mask
from .samples import Category, Sample, Split, content_hash, make_split

# The default levels' coarsest stride: a smaller image has not one cell of its own there.
MIN_IMAGE_SIDE = 16


def size_problem(image: Image.Image, name: str | Path) -> str | None:
    """Why ``image`` is too small for the network, or None."""
    if min(image.size) < MIN_IMAGE_SIDE:
        return f"image {name} is {image.width}x{image.height}, smaller than the network's stride {MIN_IMAGE_SIDE}"
    return None


@dataclass(frozen=True)
class DatasetReport:
    """What :func:`check_dataset` found, and the split it made; ``ok`` when there are no problems (notes are
    allowed). A failed selection leaves the split without known anomalies, and says why in ``problems``."""

    split: Split
    problems: tuple[str, ...]
    notes: tuple[str, ...]
    # Content hash (SHA-1) of every readable image, by path.
    hashes: Mapping[Path, str] = field(default_factory=dict)

    def training_fingerprint(self) -> str:
        """A hash of the names and contents of the training images (normals and known anomalies): what a resumed
        fit must find unchanged."""
        split = self.split
        names = (f"{split.category.relative(s.path)}\t{self.hashes.get(s.path)}" for s in split.train + split.known)
        lines = sorted(names)
        return hashlib.sha1("\n".join(lines).encode(errors="surrogateescape")).hexdigest()

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        split = self.split
        evaluation = split.evaluation
        n_defects = sum(s.is_anomalous for s in evaluation)
        return (
            f"{split.category.name}: {len(split.train)} training normals, {len(split.known)} known anomalies; "
            f"evaluation: {len(evaluation) - n_defects} normals, {n_defects} defects"
        )

    def raise_for_problems(self) -> None:
        if self.problems:
            raise DatasetError(self.problems)


def _file_problems(sample: Sample) -> tuple[list[str], str | None]:
    """Problems of one sample's files, and the image's content hash (None if unreadable)."""
    try:
        digest = content_hash(sample.path)
        image = read_image(sample.path)
    except (OSError, BGADError) as err:
        return [str(err) if isinstance(err, BGADError) else f"cannot read image {sample.path}: {err}"], None
    problems = [problem] if (problem := size_problem(image, sample.path)) else []
    if sample.mask_path is not None and sample.mask_path.exists() and not sample.mask_path.is_file():
        problems.append(f"mask {sample.mask_path} is not a regular file")
    elif sample.mask_path is not None:
        try:
            mask = read_mask(sample.mask_path)
        except BGADError as err:
            problems.append(str(err).replace("image", "mask", 1))
        else:
            if mask.shape != (image.height, image.width):
                problems.append(
                    f"mask {sample.mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {sample.path} is "
                    f"{image.width}x{image.height}"
                )
            elif not mask.any():
                problems.append(f"mask {sample.mask_path} of defect image {sample.path} is empty")
    return problems, digest


def _selection(category: Category, train: TrainConfig) -> tuple[Split, str]:
    try:
        return make_split(category, train), ""
    except BGADError as err:
        return Split(category, ()), str(err)


def check_dataset(
    category: Category,
    train: TrainConfig,
    *,
    drop_duplicates: bool = False,
    progress: bool = True,
) -> DatasetReport:
    """Read every image and mask of ``category`` once and report all problems found (see the module docstring).

    An evaluation image with the same content as a training image is a problem, or, with ``drop_duplicates``, is
    dropped from the evaluation set and counted in a note; known anomalies are then chosen from what is left, as
    ``train`` says (:func:`bgad.data.samples.make_split`): the report's ``split`` is the one a fit uses.
    """
    problems = list(category.problems)
    roles = [(s, "train") for s in category.train + category.known] + [(s, "test") for s in category.test]
    hashes: dict[Path, str] = {}
    by_hash: dict[str, list[tuple[Sample, str]]] = defaultdict(list)
    for sample, role in progress_bar(roles, desc="checking images", unit="img", disable=not progress):
        sample_problems, digest = _file_problems(sample)
        problems += sample_problems
        if digest is not None:
            hashes[sample.path] = digest
            by_hash[digest].append((sample, role))
    duplicates = [copies for copies in by_hash.values() if {"train", "test"} <= {role for _, role in copies}]
    notes = []
    if drop_duplicates and duplicates:
        dropped = {s.path for copies in duplicates for s, role in copies if role == "test"}
        category = replace(category, test=tuple(s for s in category.test if s.path not in dropped))
        notes.append(
            f"{len(dropped)} evaluation image(s) identical to a training image were dropped (--drop-duplicates)"
        )
    else:
        for copies in duplicates:
            names = ", ".join(str(s.path) for s, _ in copies)
            problems.append(
                f"the same image is in training and evaluation: {names} "
                "(--drop-duplicates keeps the training copy and drops the evaluation one)"
            )
    split, selection_problem = _selection(category, train)
    if selection_problem:
        problems.insert(len(category.problems), selection_problem)
    notes += _notes(split.evaluation)
    return DatasetReport(split, tuple(problems), tuple(notes), hashes)


def drop_evaluation_duplicates(category: Category) -> tuple[Category, int]:
    """``category`` without the evaluation images whose content equals a training image's, and how many those were
    (what ``--drop-duplicates`` did at fit time, repeated by ``bgad test``)."""
    training = {_hash_or_none(s.path) for s in category.train + category.known} - {None}
    kept = tuple(s for s in category.test if _hash_or_none(s.path) not in training)
    return replace(category, test=kept), len(category.test) - len(kept)


def _hash_or_none(path: Path) -> str | None:
    try:
        return content_hash(path)
    except BGADError:
        return None


def _notes(evaluation: tuple[Sample, ...]) -> tuple[str, ...]:
    notes = []
    if not any(not s.is_anomalous for s in evaluation):
        notes.append("no normal images are held out for evaluation: image metrics will be undefined")
    if not any(s.is_anomalous for s in evaluation):
        notes.append("no defect images are left for evaluation: metrics will be undefined")
    image_only = sum(not s.has_pixel_labels for s in evaluation)
    if image_only:
        notes.append(f"{image_only} defect image(s) without masks count for image metrics only")
    return tuple(notes)
