"""``bgad update`` / ``BGAD.update``: newly labelled defects train a run's flows on, into a new model folder."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from bgad import BGAD
from bgad.app.cli import main

from .conftest import assert_one_line, snapshot

pytestmark = pytest.mark.slow


def test_update_trains_on_from_the_parent_and_records_its_lineage(
    tiny_run: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    part = tiny_dataset / "part"
    known = set(json.loads((tiny_run / "run.json").read_text())["known_anomalies"])
    new = [p for p in sorted((part / "test").glob("*/*.png")) if p.parent.name != "good"]
    new = [p for p in new if p.relative_to(part).as_posix() not in known][:2]
    defects, masks = tmp_path / "new" / "defects", tmp_path / "new" / "masks"
    defects.mkdir(parents=True)
    masks.mkdir()
    for image in new:
        shutil.copy(image, defects / f"{image.parent.name}_{image.name}")
        shutil.copy(
            part / "ground_truth" / image.parent.name / f"{image.stem}_mask.png",
            masks / f"{image.parent.name}_{image.stem}_mask.png",
        )
    before = snapshot(tiny_run)
    out = tmp_path / "updated"
    capsys.readouterr()
    command = ["update", "--run", str(tiny_run), "--defect-dir", str(defects), "--mask-dir", str(masks)]
    assert main([*command, "--meta-epochs", "2", "--output", str(out), "--quiet"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert snapshot(tiny_run) == before
    assert json.loads((out / "update.json").read_text()) == record
    assert len(record["added_anomalies"]) == 2
    assert sorted(record["parent_known_anomalies"]) == sorted(known)
    assert record["meta_epochs"] == 2
    parent, child = BGAD.load(tiny_run).model_.state_dict(), BGAD.load(out).model_.state_dict()
    for name, tensor in child.items():
        if "flow" in name and tensor.is_floating_point() and "rotation" not in name:
            assert not torch.equal(tensor, parent[name]), f"{name} was not trained on"
        if "channel_" in name or "position_mean" in name or "whitener" in name:
            assert torch.equal(tensor, parent[name]), f"{name}: the parent's normalization is kept"
    assert main([*command, "--output", str(out), "--quiet"]) == 2  # never over an existing folder
    assert_one_line(capsys, "not empty")
