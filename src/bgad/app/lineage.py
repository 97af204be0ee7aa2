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

from ..data.samples import Category, Sample, content_hash
from ..detector import BGAD
from ..errors import BGADError
from ..storage.model_files import MODEL_JSON, MODEL_WEIGHTS, model_id
from .record import AddedImage, LeftOut, LineageStep, Parent, RunRecord


def new_step(
    parent: Path, anomalies: Sequence[Sample], normals: Sequence[Path], meta_epochs: int, normal_fraction: float
) -> LineageStep:
    """The lineage step of a run trained on from ``parent`` with ``anomalies`` (each with its mask) and
    ``normals``, for ``meta_epochs`` on ``normal_fraction`` of the parent's normals."""
    for name in (MODEL_JSON, MODEL_WEIGHTS):
        if not (parent / name).is_file():
            raise BGADError(f"not a bgad run: {parent / name} is missing")
    unmasked = [s.path for s in anomalies if s.mask_path is None]
    if unmasked:
        raise BGADError(f"defect image {unmasked[0]} has no mask: only defects with masks are trained on")
    return LineageStep(
        parent=Parent(parent.resolve(), model_id(parent / MODEL_JSON), content_hash(parent / MODEL_WEIGHTS)),
        added_anomalies=tuple(
            AddedImage(s.path.resolve(), content_hash(s.path), s.mask_path.resolve(), s.defect_type)
            for s in anomalies
            if s.mask_path is not None
        ),
        added_normals=tuple(AddedImage(p.resolve(), content_hash(p)) for p in normals),
        meta_epochs=meta_epochs,
        normal_fraction=float(normal_fraction),
    )


def added_samples(record: RunRecord) -> tuple[list[Sample], list[Sample]]:
    """The defect images (with masks) and the good images every lineage step added, in order."""
    anomalies = [Sample(a.image, a.defect_type, a.mask) for step in record.lineage for a in step.added_anomalies]
    return anomalies, [Sample(n.image) for step in record.lineage for n in step.added_normals]


def evaluation_samples(
    category: Category, record: RunRecord, *, same_dataset: bool
) -> tuple[list[Sample], tuple[LeftOut, ...]]:
    """The test images of ``category`` that the run never trained on, and those a lineage step trained on (each
    with the reason it was left out).

    Known anomalies are left out by name (on the run's own dataset, ``same_dataset``) and by content, as for every
    run, and are not listed; an image a step added is left out by resolved path, and by content (a copy).
    """
    names = set(record.known_anomalies) if same_dataset else set()
    known_content = set(record.known_anomaly_sha1)
    added = [
        (entry.image, entry.sha1) for step in record.lineage for entry in (*step.added_anomalies, *step.added_normals)
    ]
    by_path = {path.resolve() for path, _ in added}
    by_content = {digest: path for path, digest in added}
    kept, removed = [], []
    for sample in category.test:
        name = category.relative(sample.path)
        if sample.path.resolve() in by_path:
            removed.append(LeftOut(name, "trained on (added by fit --from)"))
            continue
        if name in names:
            continue
        hashed = by_content or (sample.is_anomalous and known_content)
        digest = content_hash(sample.path) if hashed else None
        if digest in by_content:
            removed.append(LeftOut(name, f"same content as {by_content[digest]} (added by fit --from)"))
        elif not (sample.is_anomalous and digest in known_content):
            kept.append(sample)
    return kept, tuple(removed)


def run_category(record: RunRecord) -> tuple[Category, tuple[LeftOut, ...]]:
    """The data a run trains and is evaluated on: its dataset, and for a run with a lineage, the training normals
    and known anomalies plus every step's additions, and the test images none of them trained on (with those left
    out, :func:`evaluation_samples`). The known anomalies then come from the category itself
    (:func:`bgad.data.samples.make_split`)."""
    category = record.dataset.load()
    if not record.lineage:
        return category, ()
    anomalies, normals = added_samples(record)
    added = {category.relative(s.path) for s in anomalies}
    by_name = {category.relative(s.path): s for s in category.test + category.known}
    earlier = [name for name in record.known_anomalies if name not in added]
    missing = [name for name in earlier if name not in by_name]
    if missing:
        raise BGADError(f"known anomaly {missing[0]} of the first run is no longer in its dataset")
    test, removed = evaluation_samples(category, record, same_dataset=True)
    known = tuple(by_name[name] for name in earlier) + tuple(anomalies)
    return replace(category, train=category.train + tuple(normals), test=tuple(test), known=known), removed


def trainer(record: RunRecord, device: str = "cpu") -> Callable[..., BGAD]:
    """What trains a run on ``device``, called as :meth:`BGAD.fit` is: that for an ordinary fit, else the parent's
    :meth:`BGAD.update` as the last step says (its new good images always trained on, a sample of the others); the
    parent's files must be the ones the step recorded."""
    if not record.lineage:
        return BGAD(record.config, device=device).fit
    step = record.lineage[-1]
    parent = step.parent.run
    try:
        same = model_id(parent / MODEL_JSON) == step.parent.model_id
        same = same and content_hash(parent / MODEL_WEIGHTS) == step.parent.weights_sha1
    except BGADError:
        same = False
    if not same:
        raise BGADError(
            f"the parent run {parent} is gone or its model changed since this run started from model "
            f"{step.parent.model_id}: start again with bgad fit --from"
        )
    detector, new = BGAD.load(parent).to(device), {entry.image for entry in step.added_normals}

    def update(normals: Sequence[Path], anomalies: Sequence[Path], masks: Sequence[Path], **options: Any) -> BGAD:
        return detector.update(
            [p for p in normals if p not in new],
            anomalies,
            masks,
            new_normal_images=[p for p in normals if p in new],
            meta_epochs=step.meta_epochs,
            normal_fraction=step.normal_fraction,
            **options,
        )

    return update


def report_notes(record: RunRecord, removed: Sequence[LeftOut]) -> list[str]:
    """Lines for the report: how the run was made from its ancestors, and the evaluation images left out because
    it trained on them."""
    notes = [
        f"Generation {index + 1}: trained on from {step.parent.run} (model {step.parent.model_id}) with "
        f"{len(step.added_anomalies)} more defect image(s) and {len(step.added_normals)} more good image(s), "
        f"{step.meta_epochs} BG-SPP meta-epoch(s) on {step.normal_fraction:.0%} of the earlier good images."
        for index, step in enumerate(record.lineage)
    ]
    if removed:
        listed = "; ".join(f"{entry.image}: {entry.reason}" for entry in removed)
        notes.append(f"{len(removed)} image(s) left out of the evaluation because the model trained on them: {listed}.")
    return notes
