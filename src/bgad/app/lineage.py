"""Runs trained on from other runs (``bgad fit --from``): what ``run.json`` records of a run's ancestry, and what
follows from it.

Such a run's ``run.json`` holds, besides what every run holds, a ``lineage``: one step per generation, oldest
first, each naming its parent run (path, model id, SHA-1 of the weights), what it added (defect images with their
masks and types, good images, each with the SHA-1 of its content) and the BG-SPP meta-epochs it ran. From it
follow the run's training images (the first run's and every step's additions), its evaluation images (the
dataset's test images minus the known anomalies and minus every image a step trained on, by resolved path or by
content) and the model whose flows it trains on. A run without a lineage is an ordinary fit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import BGADConfig
from ..data.layouts import DatasetSpec
from ..data.samples import Category, Sample, content_hash
from ..detector import BGAD
from ..errors import BGADError
from ..model_files import MODEL_JSON, MODEL_WEIGHTS, model_id

LINEAGE = "lineage"
EVALUATION_REMOVED = "evaluation_removed"
_FIELDS = {
    "step": {
        "parent": dict,
        "added_anomalies": list,
        "added_normals": list,
        "meta_epochs": int,
        "normal_fraction": float,
    },
    "parent": {"run": str, "model_id": str, "weights_sha1": str},
    "added_anomalies": {"image": str, "mask": str, "defect_type": str, "sha1": str},
    "added_normals": {"image": str, "sha1": str},
}


def lineage_steps(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The lineage of a run description (empty for an ordinary fit), checked: a damaged one is a BGADError."""
    steps = run.get(LINEAGE, [])
    if not isinstance(steps, list):
        raise BGADError(f"{LINEAGE!r} is not a list")
    for index, step in enumerate(steps):
        _check_fields(step, "step", f"lineage step {index + 1}")
        _check_fields(step["parent"], "parent", f"lineage step {index + 1}: parent")
        for kind in ("added_anomalies", "added_normals"):
            for entry in step[kind]:
                _check_fields(entry, kind, f"lineage step {index + 1}: {kind}")
    return steps


def _check_fields(record: object, kind: str, where: str) -> None:
    if not isinstance(record, dict):
        raise BGADError(f"{where} is not a JSON object")
    for key, expected in _FIELDS[kind].items():
        if not isinstance(record.get(key), expected) or isinstance(record.get(key), bool):
            raise BGADError(f"{where}: {key!r} is missing or not a {expected.__name__}")


def new_step(
    parent: Path, anomalies: Sequence[Sample], normals: Sequence[Path], meta_epochs: int, normal_fraction: float
) -> dict[str, Any]:
    """The lineage step of a run trained on from ``parent`` with ``anomalies`` (each with its mask) and
    ``normals``, for ``meta_epochs`` on ``normal_fraction`` of the parent's normals."""
    for name in (MODEL_JSON, MODEL_WEIGHTS):
        if not (parent / name).is_file():
            raise BGADError(f"not a bgad run: {parent / name} is missing")
    unmasked = [s.path for s in anomalies if s.mask_path is None]
    if unmasked:
        raise BGADError(f"defect image {unmasked[0]} has no mask: only defects with masks are trained on")
    return {
        "parent": {
            "run": str(parent.resolve()),
            "model_id": model_id(parent / MODEL_JSON),
            "weights_sha1": content_hash(parent / MODEL_WEIGHTS),
        },
        "added_anomalies": [
            {
                "image": str(s.path.resolve()),
                "mask": str(s.mask_path.resolve()),
                "defect_type": s.defect_type,
                "sha1": content_hash(s.path),
            }
            for s in anomalies
        ],
        "added_normals": [{"image": str(p.resolve()), "sha1": content_hash(p)} for p in normals],
        "meta_epochs": meta_epochs,
        "normal_fraction": float(normal_fraction),
    }


def added_samples(run: dict[str, Any]) -> tuple[list[Sample], list[Sample]]:
    """The defect images (with masks) and the good images every lineage step added, in order."""
    steps = lineage_steps(run)
    anomalies = [
        Sample(Path(a["image"]), a["defect_type"], Path(a["mask"])) for step in steps for a in step["added_anomalies"]
    ]
    return anomalies, [Sample(Path(n["image"])) for step in steps for n in step["added_normals"]]


def evaluation_samples(
    category: Category, run: dict[str, Any], *, same_dataset: bool
) -> tuple[list[Sample], list[dict[str, str]]]:
    """The test images of ``category`` that ``run`` never trained on, and those a lineage step trained on (each
    with the reason it was left out).

    Known anomalies are left out by name (on the run's own dataset, ``same_dataset``) and by content, as for every
    run, and are not listed; an image a step added is left out by resolved path, and by content (a copy).
    """
    names = set(run["known_anomalies"]) if same_dataset else set()
    known_content = set(run.get("known_anomaly_sha1", ()))
    added = [
        (Path(entry["image"]), entry["sha1"])
        for step in lineage_steps(run)
        for entry in (*step["added_anomalies"], *step["added_normals"])
    ]
    by_path = {path.resolve() for path, _ in added}
    by_content = {digest: path for path, digest in added}
    kept, removed = [], []
    for sample in category.test:
        name = category.relative(sample.path)
        if sample.path.resolve() in by_path:
            removed.append({"image": name, "reason": "trained on (added by fit --from)"})
            continue
        if name in names:
            continue
        hashed = by_content or (sample.is_anomalous and known_content)
        digest = content_hash(sample.path) if hashed else None
        if digest in by_content:
            removed.append({"image": name, "reason": f"same content as {by_content[digest]} (added by fit --from)"})
        elif not (sample.is_anomalous and digest in known_content):
            kept.append(sample)
    return kept, removed


def run_category(run: dict[str, Any]) -> tuple[Category, list[dict[str, str]]]:
    """The data a run trains and is evaluated on: its dataset, and for a run with a lineage, the training normals
    and known anomalies plus every step's additions, and the test images none of them trained on (with those left
    out, :func:`evaluation_samples`). The known anomalies then come from the category itself
    (:func:`bgad.data.samples.make_split`)."""
    category = DatasetSpec.from_dict(run["dataset"]).load()
    if not lineage_steps(run):
        return category, []
    anomalies, normals = added_samples(run)
    added = {category.relative(s.path) for s in anomalies}
    by_name = {category.relative(s.path): s for s in category.test + category.known}
    earlier = [name for name in run["known_anomalies"] if name not in added]
    missing = [name for name in earlier if name not in by_name]
    if missing:
        raise BGADError(f"known anomaly {missing[0]} of the first run is no longer in its dataset")
    test, removed = evaluation_samples(category, run, same_dataset=True)
    known = tuple(by_name[name] for name in earlier) + tuple(anomalies)
    return replace(category, train=category.train + tuple(normals), test=tuple(test), known=known), removed


def trainer(run: dict[str, Any], config: BGADConfig, device: str = "cpu") -> Callable[..., BGAD]:
    """What trains a run on ``device``, called as :meth:`BGAD.fit` is: that for an ordinary fit, else the parent's
    :meth:`BGAD.update` as the last step says (its new good images always trained on, a sample of the others); the
    parent's files must be the ones the step recorded."""
    steps = lineage_steps(run)
    if not steps:
        return BGAD(config, device=device).fit
    step = steps[-1]
    parent, recorded = Path(step["parent"]["run"]), step["parent"]
    try:
        same = model_id(parent / MODEL_JSON) == recorded["model_id"]
        same = same and content_hash(parent / MODEL_WEIGHTS) == recorded["weights_sha1"]
    except BGADError:
        same = False
    if not same:
        raise BGADError(
            f"the parent run {parent} is gone or its model changed since this run started from model "
            f"{recorded['model_id']}: start again with bgad fit --from"
        )
    detector, new = BGAD.load(parent).to(device), {Path(entry["image"]) for entry in step["added_normals"]}

    def update(normals: Sequence[Path], anomalies: Sequence[Path], masks: Sequence[Path], **options: Any) -> BGAD:
        return detector.update(
            [p for p in normals if p not in new],
            anomalies,
            masks,
            new_normal_images=[p for p in normals if p in new],
            meta_epochs=step["meta_epochs"],
            normal_fraction=step["normal_fraction"],
            **options,
        )

    return update


def report_notes(run: dict[str, Any], removed: Sequence[dict[str, str]]) -> list[str]:
    """Lines for the report: how the run was made from its ancestors, and the evaluation images left out because
    it trained on them."""
    notes = [
        f"Generation {index + 1}: trained on from {step['parent']['run']} (model {step['parent']['model_id']}) with "
        f"{len(step['added_anomalies'])} more defect image(s) and {len(step['added_normals'])} more good image(s), "
        f"{step['meta_epochs']} BG-SPP meta-epoch(s) on {step['normal_fraction']:.0%} of the earlier good images."
        for index, step in enumerate(lineage_steps(run))
    ]
    if removed:
        listed = "; ".join(f"{entry['image']}: {entry['reason']}" for entry in removed)
        notes.append(f"{len(removed)} image(s) left out of the evaluation because the model trained on them: {listed}.")
    return notes
