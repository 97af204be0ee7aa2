"""``run.json``: the typed record of a run, read and written only here.

A :class:`RunRecord` says what a run trains and is evaluated on (the dataset, the configuration, the evaluation
size, whether duplicates were dropped) and, once the dataset check has made its split, what that split was (the
known anomalies by name, type and content hash, a fingerprint of the training images). A run trained on from
another (``bgad fit --from``, :mod:`bgad.app.lineage`) adds its :class:`LineageStep` s and the evaluation images it
left out because it trained on them; a run whose settings were chosen by ``--select`` keeps that selection's
record. :func:`read_run` checks every field it reads, so a damaged file is one line naming it, never a traceback
later on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._version import __version__
from ..config import BGADConfig
from ..data.layouts import DatasetSpec
from ..errors import BGADError
from ..storage.serialization import write_json

RUN_JSON = "run.json"


def _field(record: object, key: str, kind: type, where: str) -> Any:
    """``record[key]``, which must be of ``kind`` (a bool is never an int or a float); else a BGADError whose
    message starts with ``where`` (empty, or a location ending in ": ")."""
    if not isinstance(record, Mapping):
        raise BGADError(f"{where.removesuffix(': ') or 'the record'} is not a JSON object")
    value = record.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BGADError(f"{where}{key!r} is missing or not a {kind.__name__}")
    return value


def _strings(
    record: Mapping[str, Any], key: str, where: str, default: tuple[str, ...] | None = None
) -> tuple[str, ...]:
    """A list of strings at ``record[key]`` (``default`` when the key is absent and one is given)."""
    if key not in record and default is not None:
        return default
    values = _field(record, key, list, where)
    if not all(isinstance(value, str) for value in values):
        raise BGADError(f"{where}{key!r} is not a list of names")
    return tuple(values)


@dataclass(frozen=True)
class Parent:
    """The run a lineage step trained on from, as it was then."""

    run: Path
    model_id: str
    weights_sha1: str

    def to_dict(self) -> dict[str, str]:
        return {"run": str(self.run), "model_id": self.model_id, "weights_sha1": self.weights_sha1}

    @classmethod
    def from_dict(cls, data: object, where: str) -> Parent:
        run, model_id, weights_sha1 = (_field(data, key, str, where) for key in ("run", "model_id", "weights_sha1"))
        return cls(Path(run), model_id, weights_sha1)


@dataclass(frozen=True)
class AddedImage:
    """An image a lineage step added: a good image, or a defect image with its mask and type."""

    image: Path
    sha1: str
    mask: Path | None = None
    defect_type: str | None = None

    def to_dict(self) -> dict[str, str]:
        out = {"image": str(self.image)}
        if self.mask is not None:
            out |= {"mask": str(self.mask), "defect_type": str(self.defect_type)}
        return out | {"sha1": self.sha1}

    @classmethod
    def from_dict(cls, data: object, where: str, *, defect: bool) -> AddedImage:
        image, sha1 = Path(_field(data, "image", str, where)), _field(data, "sha1", str, where)
        if not defect:
            return cls(image, sha1)
        return cls(image, sha1, Path(_field(data, "mask", str, where)), _field(data, "defect_type", str, where))


@dataclass(frozen=True)
class LineageStep:
    """One generation of ``fit --from``: its parent, what it added, and its BG-SPP schedule."""

    parent: Parent
    added_anomalies: tuple[AddedImage, ...]
    added_normals: tuple[AddedImage, ...]
    meta_epochs: int
    normal_fraction: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "parent": self.parent.to_dict(),
            "added_anomalies": [entry.to_dict() for entry in self.added_anomalies],
            "added_normals": [entry.to_dict() for entry in self.added_normals],
            "meta_epochs": self.meta_epochs,
            "normal_fraction": self.normal_fraction,
        }

    @classmethod
    def from_dict(cls, data: object, where: str) -> LineageStep:
        added = {
            kind: tuple(
                AddedImage.from_dict(entry, f"{where}{kind}: ", defect=kind == "added_anomalies")
                for entry in _field(data, kind, list, where)
            )
            for kind in ("added_anomalies", "added_normals")
        }
        return cls(
            Parent.from_dict(_field(data, "parent", dict, where), f"{where}parent: "),
            added["added_anomalies"],
            added["added_normals"],
            _field(data, "meta_epochs", int, where),
            _field(data, "normal_fraction", float, where),
        )


@dataclass(frozen=True)
class LeftOut:
    """An evaluation image a run left out because a lineage step trained on it, and why."""

    image: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"image": self.image, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: object) -> LeftOut:
        where = "evaluation_removed: "
        return cls(_field(data, "image", str, where), _field(data, "reason", str, where))


@dataclass(frozen=True)
class RunRecord:
    """What ``run.json`` holds. Before the dataset check only the first block is known (and, for ``fit --from``,
    the parent's known anomalies); :func:`bgad.app.runs.start_run` fills in the rest from the split."""

    dataset: DatasetSpec
    config: BGADConfig
    eval_size: str = "input"
    drop_duplicates: bool = False
    lineage: tuple[LineageStep, ...] = ()
    # from the dataset check
    category: str | None = None
    known_anomalies: tuple[str, ...] = ()  # relative to the dataset, in training order
    known_types: tuple[str, ...] = ()
    known_anomaly_sha1: tuple[str, ...] = ()  # `bgad test` leaves these out by content, even on a copy of the data
    training_fingerprint: str | None = None
    evaluation_removed: tuple[LeftOut, ...] = ()
    selection: Mapping[str, Any] | None = None  # bgad.selection.Selection.to_dict(), when --select chose the config
    bgad_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        out = {
            "bgad_version": self.bgad_version,
            "dataset": self.dataset.to_dict(),
            "category": self.category,
            "config": self.config.to_dict(),
            "known_anomalies": list(self.known_anomalies),
            "known_types": list(self.known_types),
            "known_anomaly_sha1": list(self.known_anomaly_sha1),
            "drop_duplicates": self.drop_duplicates,
            "training_fingerprint": self.training_fingerprint,
            "eval_size": self.eval_size,
        }
        if self.selection is not None:
            out["selection"] = dict(self.selection)
        if self.lineage:
            out["lineage"] = [step.to_dict() for step in self.lineage]
            out["evaluation_removed"] = [entry.to_dict() for entry in self.evaluation_removed]
        return out

    @classmethod
    def from_dict(cls, data: object) -> RunRecord:
        """The record of a parsed ``run.json``, every field checked (a BGADError says which is wrong)."""
        if not isinstance(data, dict):
            raise BGADError("not a JSON object")
        dataset, config = _field(data, "dataset", dict, ""), _field(data, "config", dict, "")
        names = {key: _strings(data, key, "") for key in ("known_anomalies", "known_types")}
        hashes = _strings(data, "known_anomaly_sha1", "", default=())
        steps = tuple(
            LineageStep.from_dict(step, f"lineage step {index + 1}: ")
            for index, step in enumerate(_field(data, "lineage", list, "") if "lineage" in data else ())
        )
        removed = tuple(
            LeftOut.from_dict(entry)
            for entry in (_field(data, "evaluation_removed", list, "") if "evaluation_removed" in data else ())
        )
        return cls(
            dataset=DatasetSpec.from_dict(dataset),
            config=BGADConfig.from_dict(config),
            eval_size=str(data.get("eval_size", "input")),
            drop_duplicates=data.get("drop_duplicates") is True,
            lineage=steps,
            category=data.get("category") if isinstance(data.get("category"), str) else None,
            known_anomalies=names["known_anomalies"],
            known_types=names["known_types"],
            known_anomaly_sha1=hashes,
            training_fingerprint=_field(data, "training_fingerprint", str, "")
            if data.get("training_fingerprint") is not None
            else None,
            evaluation_removed=removed,
            selection=_field(data, "selection", dict, "") if "selection" in data else None,
            bgad_version=str(data.get("bgad_version", "unknown")),
        )


def read_run(path: Path) -> RunRecord:
    """The record in ``path`` (a ``run.json``); a damaged one is a one-line BGADError naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BGADError(f"cannot read {path}: {err}") from None
    if isinstance(data, dict) and "dataset" not in data:
        raise BGADError(f"{path} was written by an older bgad that did not record its dataset; fit it again")
    try:
        return RunRecord.from_dict(data)
    except BGADError as err:
        raise BGADError(f"{path} is damaged: {err}") from None


def write_run(path: Path, record: RunRecord) -> None:
    """Write ``record`` to ``path`` atomically."""
    write_json(path, record.to_dict())
