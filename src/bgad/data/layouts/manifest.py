"""A CSV manifest, for everything folders cannot say: ``path,label,mask,split[,defect_type]``.

- ``path``, ``mask``: relative to the CSV's folder, or absolute; ``mask`` may be empty.
- ``label``: ``normal`` (or ``good``, ``ok``, ``0``) or ``anomaly`` (or ``anomalous``, ``defect``, ``bad``,
  ``ko``, ``1``), case-insensitive.
- ``split``: ``train`` or ``test``. Anomalies in ``train`` are the known anomalies, exactly those (the number
  of known anomalies option is then unused); with none, known anomalies are drawn from the test anomalies.
- ``defect_type``: optional, default ``defect``; used for stratified sampling and per-type metrics.

VisA's split files (``split_csv/1cls.csv``) are read with the same code (:func:`bgad.data.layouts.visa.load_visa`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from ...errors import BGADError
from ..samples import GOOD, Category, Sample
from .files import check_unmasked

NORMAL_LABELS = {"normal", "good", "ok", "0"}
ANOMALY_LABELS = {"anomaly", "anomalous", "defect", "bad", "ko", "1"}
SPLITS = {"train", "test"}
COLUMNS = ("path", "label", "mask", "split")
DEFAULT_TYPE = "defect"


def read_rows(csv_path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs of a CSV with a header naming at least ``columns``; blank lines skipped."""
    if not csv_path.is_file():
        raise BGADError(f"manifest not found: {csv_path}")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [c for c in columns if c not in header]
            if missing:
                raise BGADError(
                    f"manifest {csv_path} lacks column(s) {', '.join(missing)} (header: {','.join(header) or 'empty'})"
                )
            reader.fieldnames = header
            rows = [
                (reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None})
                for row in reader
                if any((v or "").strip() for v in row.values() if isinstance(v, str))
            ]
    except (UnicodeDecodeError, csv.Error) as err:
        raise BGADError(f"cannot read manifest {csv_path}: {err}") from None
    return rows


def build_category(
    name: str,
    root: Path,
    rows: list[tuple[int, dict[str, str]]],
    where: str,
    *,
    unmasked: str,
    keep: Callable[[dict[str, str]], bool] = lambda row: True,
) -> Category:
    """A category from manifest-style rows (``path``, ``label``, ``mask``, ``split``, optional ``defect_type``),
    with one problem line per bad row, naming ``where`` (file and line)."""
    check_unmasked(unmasked)
    train, test, known, problems = [], [], [], []
    for line, row in rows:
        if not keep(row):
            continue
        label, split = row["label"].lower(), row["split"].lower()
        at = f"{where}:{line}"
        if not row["path"]:
            problems.append(f"{at}: empty path")
            continue
        if label not in NORMAL_LABELS | ANOMALY_LABELS:
            problems.append(f"{at}: unknown label {row['label']!r} (use normal or anomaly)")
            continue
        if split not in SPLITS:
            problems.append(f"{at}: unknown split {row['split']!r} (use train or test)")
            continue
        path = root / row["path"]
        mask = root / row["mask"] if row["mask"] else None
        if label in NORMAL_LABELS:
            if mask is not None:
                problems.append(f"{at}: normal image {path} has a mask; leave the mask empty or label it anomaly")
            (train if split == "train" else test).append(Sample(path))
            continue
        defect_type = row.get("defect_type") or DEFAULT_TYPE
        if defect_type == GOOD:
            problems.append(f"{at}: anomaly {path} has defect_type {GOOD!r}, the name reserved for normal images")
            continue
        sample = Sample(path, defect_type, mask)
        if mask is None and split == "train":
            problems.append(f"{at}: training anomaly {path} has no mask (known anomalies need pixel masks)")
        elif mask is None and unmasked == "error":
            problems.append(
                f"{at}: anomaly {path} has no mask (--unmasked-defects image-only evaluates it at image level only)"
            )
        (known if split == "train" else test).append(sample)
    if not train:
        raise BGADError(f"{where} lists no normal training images (label normal, split train)")
    return Category(
        name,
        root,
        tuple(sorted(train, key=lambda s: s.path)),
        tuple(sorted(test, key=lambda s: s.path)),
        known=tuple(sorted(known, key=lambda s: s.path)),
        problems=tuple(problems),
    )


def load_manifest(manifest: str | Path, *, unmasked: str = "error") -> Category:
    """Index the dataset a manifest CSV describes; the dataset's name is the CSV's stem."""
    path = Path(manifest)
    rows = read_rows(path, COLUMNS)
    return build_category(path.stem, path.parent, rows, path.name, unmasked=unmasked)
