"""``run.json`` (:mod:`bgad.app.record`): a record reads back as it was written, every field is checked, and a
damaged field is one error naming it."""

import json
from pathlib import Path

import pytest

from bgad import BGADConfig, BGADError
from bgad.app.record import AddedImage, LeftOut, LineageStep, Parent, RunRecord, read_run, write_run
from bgad.data.layouts import DatasetSpec


def _record() -> RunRecord:
    step = LineageStep(
        parent=Parent(Path("/runs/first"), "abc123", "f" * 40),
        added_anomalies=(AddedImage(Path("/new/crack_1.png"), "1" * 40, Path("/new/crack_1_mask.png"), "crack"),),
        added_normals=(AddedImage(Path("/new/good_7.png"), "2" * 40),),
        meta_epochs=2,
        normal_fraction=0.5,
    )
    return RunRecord(
        DatasetSpec("mvtec", {"data_root": "/data/mvtec_ad", "category": "bottle"}),
        BGADConfig.from_dict({"model": {"strides": [16]}, "train": {"seed": 3}}),
        eval_size="full",
        drop_duplicates=True,
        lineage=(step,),
        category="bottle",
        known_anomalies=("test/broken_large/000.png", "/new/crack_1.png"),
        known_types=("broken_large", "crack"),
        known_anomaly_sha1=("3" * 40, "1" * 40),
        training_fingerprint="4" * 40,
        evaluation_removed=(LeftOut("test/good/001.png", "trained on (added by fit --from)"),),
        selection={"folds": 3, "chosen": "strides 16, T = 2"},
    )


def test_a_record_reads_back_as_it_was_written(tmp_path: Path) -> None:
    record = _record()
    write_run(tmp_path / "run.json", record)
    assert read_run(tmp_path / "run.json") == record
    assert json.loads((tmp_path / "run.json").read_text()) == record.to_dict()


def test_a_record_without_lineage_writes_no_lineage_fields(tmp_path: Path) -> None:
    record = RunRecord(DatasetSpec("folders", {"normal_dir": "/good"}), BGADConfig())
    assert not {"lineage", "evaluation_removed", "selection"} & set(record.to_dict())
    write_run(tmp_path / "run.json", record)
    assert read_run(tmp_path / "run.json") == record


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d.__setitem__("config", []), "'config' is missing or not a dict"),
        (lambda d: d.__setitem__("known_types", ["crack", 3]), "'known_types' is not a list of names"),
        (lambda d: d["lineage"][0].__setitem__("meta_epochs", True), "lineage step 1: 'meta_epochs' is missing"),
        (lambda d: d["lineage"][0]["parent"].pop("model_id"), "lineage step 1: parent: 'model_id' is missing"),
        (
            lambda d: d["lineage"][0]["added_anomalies"][0].pop("mask"),
            "lineage step 1: added_anomalies: 'mask' is missing",
        ),
        (lambda d: d["evaluation_removed"].append("x"), "evaluation_removed is not a JSON object"),
        (lambda d: d["config"]["model"].__setitem__("strides", [5]), "stride"),
        (lambda d: d["dataset"].__setitem__("layout", "zip"), "unknown dataset layout"),
    ],
    ids=["config", "types", "meta-epochs", "parent", "mask", "removed", "bad-config", "bad-layout"],
)
def test_a_damaged_field_is_one_error_naming_the_file_and_the_field(tmp_path: Path, edit, needle: str) -> None:
    data = _record().to_dict()
    edit(data)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BGADError, match="is damaged") as raised:
        read_run(path)
    assert str(path) in str(raised.value)
    assert needle in str(raised.value)


def test_a_record_of_an_older_bgad_without_its_dataset_says_so(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"config": {}, "known_anomalies": [], "known_types": []}))
    with pytest.raises(BGADError, match="older bgad that did not record its dataset"):
        read_run(path)
