"""Finding images in folders and matching masks to images by file name.

A mask belongs to an image when its stem is the image's stem, optionally followed by one of
:data:`MASK_SUFFIXES` (case-insensitive): ``crack_01.png`` matches ``crack_01.png``, ``crack_01_mask.png``,
``crack_01_label.bmp`` or ``crack_01_GT.tif`` in a mask folder, whatever the extensions. When several candidates
exist, the one in a folder named after the image's defect type wins (``masks/<type>/...``); if that still leaves
more than one, the match is ambiguous and reported.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from ...errors import BGADError
from ..images import IMAGE_SUFFIXES
from ..samples import Sample

MASK_SUFFIXES = ("", "_mask", "_label", "_gt")
UNMASKED_CHOICES = ("error", "image-only")


def check_unmasked(unmasked: str) -> None:
    if unmasked not in UNMASKED_CHOICES:
        raise BGADError(f"unknown unmasked-defects choice {unmasked!r}; use {' or '.join(UNMASKED_CHOICES)}")


def existing_folder(path: str | Path, what: str) -> Path:
    """``path`` as a Path, or one clear error naming ``what`` it should have been."""
    folder = Path(path)
    if not folder.is_dir():
        raise BGADError(f"{what} not found: {folder}" if not folder.exists() else f"{what} is not a folder: {folder}")
    return folder


def image_files(folder: Path, *, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (by extension, case-insensitive), sorted."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def mask_like(files: Sequence[Path]) -> set[Path]:
    """The files of one folder that are masks of other files there (``a.png`` beside ``a_mask.png``)."""
    stems = {p.stem.lower() for p in files}
    return {
        p
        for p in files
        for suffix in MASK_SUFFIXES[1:]
        if p.stem.lower().endswith(suffix) and p.stem.lower()[: -len(suffix)] in stems
    }


class MaskIndex:
    """Every image file under some folders (except the dataset's own images), indexed by lower-case stem."""

    def __init__(self, folders: Sequence[Path], *, images: Iterable[Path] = ()):
        self.folders = tuple(folders)
        skip = set(images)
        self._by_stem: dict[str, list[Path]] = defaultdict(list)
        for folder in dict.fromkeys(self.folders):
            for path in image_files(folder, recursive=True):
                if path not in skip:
                    self._by_stem[path.stem.lower()].append(path)

    def find(self, image: Path, defect_type: str, types: Iterable[str] = ()) -> tuple[Path | None, str | None]:
        """``(mask, None)``, ``(None, None)`` when there is none, or ``(None, problem)`` when ambiguous.

        A candidate in a folder named after another of the dataset's ``types`` belongs to that type's images.
        """
        stem = image.stem.lower()
        others = set(types) - {defect_type}
        candidates = sorted(
            p for suffix in MASK_SUFFIXES for p in self._by_stem.get(stem + suffix, []) if p.parent.name not in others
        )
        if len(candidates) > 1:
            typed = [p for p in candidates if p.parent.name == defect_type]
            candidates = typed or candidates
        if len(candidates) > 1:
            names = ", ".join(str(p) for p in candidates)
            return None, f"defect image {image} has {len(candidates)} candidate masks ({names}); keep one"
        return (candidates[0] if candidates else None), None

    def defect_samples(self, images: Iterable[tuple[Path, str]], *, unmasked: str) -> tuple[list[Sample], list[str]]:
        """Samples for ``(image, defect type)`` pairs with their masks, and one problem line per image whose mask
        is ambiguous, or missing when ``unmasked == "error"`` (with ``"image-only"`` it stays without a mask)."""
        images = list(images)
        types = {defect_type for _, defect_type in images}
        samples, problems = [], []
        for image, defect_type in images:
            mask, problem = self.find(image, defect_type, types)
            if problem is None and mask is None and unmasked == "error":
                names = "{" + ",".join(MASK_SUFFIXES) + "}"
                where = ", ".join(str(f) for f in self.folders)
                problem = (
                    f"defect image {image} has no mask (looked for {image.stem}{names}.* in {where}; "
                    "--unmasked-defects image-only evaluates such images at image level only)"
                )
            if problem is not None:
                problems.append(problem)
            samples.append(Sample(image, defect_type, mask))
        return samples, problems
