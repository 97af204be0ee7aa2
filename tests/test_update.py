"""``bgad fit --from RUN`` / ``BGAD.update``: newly labelled images train a run's flows on, into a new run folder
with its lineage, evaluated on the parent's evaluation images minus what it trained on."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

import bgad.detector
import bgad.method.training
from bgad import BGAD, BGADError
from bgad.app.cli import main
from bgad.app.runs import is_run_folder, partial_folder

from .conftest import assert_one_line, interrupt_at, snapshot

pytestmark = pytest.mark.slow


def _new_defects(part: Path, folder: Path, names: list[str]) -> Path:
    """Copies of the test defects ``names`` ("crack/000") under other names, with their masks, in ``folder``."""
    (folder / "defects").mkdir(parents=True)
    (folder / "masks").mkdir()
    for name in names:
        defect_type, stem = name.split("/")
        shutil.copy(part / "test" / f"{name}.png", folder / "defects" / f"{defect_type}_{stem}.png")
        shutil.copy(
            part / "ground_truth" / defect_type / f"{stem}_mask.png",
            folder / "masks" / f"{defect_type}_{stem}_mask.png",
        )
    return folder


def _unknown_defects(run: Path, part: Path, count: int) -> list[str]:
    """``count`` test defects of ``part`` that ``run`` did not train on, as "type/stem"."""
    known = set(json.loads((run / "run.json").read_text())["known_anomalies"])
    defects = sorted(p for p in (part / "test").glob("*/*.png") if p.parent.name != "good")
    return [f"{p.parent.name}/{p.stem}" for p in defects if p.relative_to(part).as_posix() not in known][:count]


def _from(parent: Path, output: Path, new: Path, *extra: str, epochs: int = 1) -> list[str]:
    images = ["--defect-dir", str(new / "defects"), "--mask-dir", str(new / "masks")]
    return [
        "fit",
        "--from",
        str(parent),
        *images,
        "--meta-epochs",
        str(epochs),
        "--output",
        str(output),
        "--quiet",
        *extra,
    ]


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def updated(tiny_run: Path, tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """tiny_run trained on with copies of two test defects and, as a new good image, a link to test/good/000.png;
    then that run trained on with one more defect. The parent's files are snapshotted before each."""
    part, work = tiny_dataset / "part", tmp_path_factory.mktemp("update")
    first, second = _unknown_defects(tiny_run, part, 3)[:2], _unknown_defects(tiny_run, part, 3)[2:]
    new = _new_defects(part, work / "new", first)
    (new / "good").mkdir()
    (new / "good" / "linked.png").symlink_to(part / "test" / "good" / "000.png")
    before = snapshot(tiny_run)
    child = work / "child"
    assert main([*_from(tiny_run, child, new), "--normal-dir", str(new / "good")]) == 0
    parent_unchanged = snapshot(tiny_run) == before
    child_before = snapshot(child)
    grandchild = work / "grandchild"
    assert main([*_from(child, grandchild, _new_defects(part, work / "more", second)), "--normal-fraction", "1"]) == 0
    return {
        "part": part,
        "first": first,
        "second": second,
        "new": new,
        "child": child,
        "grandchild": grandchild,
        "parent_unchanged": parent_unchanged,
        "child_unchanged": snapshot(child) == child_before,
    }


def test_fit_from_writes_a_run_with_its_lineage(updated: dict, tiny_run: Path) -> None:
    child, new = updated["child"], updated["new"]
    assert updated["parent_unchanged"]
    assert is_run_folder(child)
    for name in ("model.safetensors", "metrics.json", "report.html", "known_anomalies.txt", "train_log.jsonl"):
        assert (child / name).is_file(), name
    assert len((child / "train_log.jsonl").read_text().splitlines()) == 1  # --meta-epochs 1
    run, parent_run = (json.loads((path / "run.json").read_text()) for path in (child, tiny_run))
    [step] = run["lineage"]
    assert step["parent"]["run"] == str(tiny_run.resolve())
    assert step["parent"]["model_id"] == hashlib.sha1((tiny_run / "model.json").read_bytes()).hexdigest()[:12]
    assert step["parent"]["weights_sha1"] == hashlib.sha1((tiny_run / "model.safetensors").read_bytes()).hexdigest()
    added = sorted((new / "defects").iterdir())
    assert [a["image"] for a in step["added_anomalies"]] == [str(p.resolve()) for p in added]
    assert [a["mask"] for a in step["added_anomalies"]] == [str(p.resolve()) for p in sorted((new / "masks").iterdir())]
    assert [n["image"] for n in step["added_normals"]] == [str((updated["part"] / "test/good/000.png").resolve())]
    assert step["meta_epochs"] == 1
    assert step["normal_fraction"] == 0.5  # train.update_normal_fraction
    # half of the parent's 12 training normals, and the new one, which is never left out of the sample
    assert len(BGAD.load(child).normal_scores_) == 6 + 1
    assert run["known_anomalies"] == parent_run["known_anomalies"] + [str(p.resolve()) for p in added]
    assert run["dataset"] == parent_run["dataset"]
    assert run["config"] == parent_run["config"]
    assert _metrics(child)["n_known_anomalies"] == 5


def test_the_evaluation_leaves_out_what_was_added(updated: dict, tiny_run: Path) -> None:
    child = updated["child"]
    run = json.loads((child / "run.json").read_text())
    removed = {entry["image"]: entry["reason"] for entry in run["evaluation_removed"]}
    copies = {f"test/{name}.png" for name in updated["first"]}
    assert set(removed) == copies | {"test/good/000.png"}  # the copies by content, the link by resolved path
    assert all("same content as" in removed[name] for name in copies)
    assert _metrics(child)["n_eval_images"] == _metrics(tiny_run)["n_eval_images"] - 3
    report = (child / "report.html").read_text()
    assert "3 image(s) left out of the evaluation" in report
    assert all(name in report for name in removed)


def test_the_updated_run_tests_and_predicts_like_any_run(
    updated: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    child = updated["child"]
    capsys.readouterr()
    assert main(["test", "--run", str(child), "--quiet"]) == 0
    tested = json.loads(capsys.readouterr().out)
    fitted = _metrics(child)
    fitted.pop("train_seconds")
    assert tested == fitted  # the same evaluation images: the added ones stay left out
    out = tmp_path / "predictions"
    good = str(updated["part"] / "test" / "good")
    assert main(["predict", "--run", str(child), "--output", str(out), good, "--review", "2", "--quiet"]) == 0
    assert (out / "review.csv").is_file()


def test_the_serve_page_takes_an_updated_run(updated: dict) -> None:
    testclient = pytest.importorskip("fastapi.testclient", reason="bgad serve needs its extra")
    from bgad.app.serve import Scorer, create_app, model_description

    child = updated["child"]
    detector = BGAD.load(child)
    app = create_app(Scorer(detector, model_description(child, detector), 1_000_000))
    with testclient.TestClient(app, base_url="http://localhost") as client:
        model = client.get("/model").json()
        image = (updated["part"] / "test" / "good" / "001.png").read_bytes()
        scored = client.post("/predict", content=image, headers={"content-type": "image/png"})
    grandchild_run = json.loads((updated["grandchild"] / "run.json").read_text())
    assert model["model_id"] == grandchild_run["lineage"][-1]["parent"]["model_id"]
    assert model["training_metrics"]["n_known_anomalies"] == 5
    assert scored.status_code == 200


def test_a_chained_update_keeps_the_whole_lineage(updated: dict, tiny_run: Path) -> None:
    child, grandchild = updated["child"], updated["grandchild"]
    assert updated["child_unchanged"]
    first, second = (json.loads((path / "run.json").read_text()) for path in (child, grandchild))
    assert second["lineage"][0] == first["lineage"][0]
    assert second["lineage"][1]["parent"]["run"] == str(child.resolve())
    assert len(second["lineage"][1]["added_anomalies"]) == 1
    assert second["lineage"][1]["normal_fraction"] == 1.0
    assert len(BGAD.load(grandchild).normal_scores_) == 12 + 1  # every normal: the first run's and the one added
    assert second["known_anomalies"][:-1] == first["known_anomalies"]
    removed = {entry["image"] for entry in second["evaluation_removed"]}
    assert removed == {entry["image"] for entry in first["evaluation_removed"]} | {f"test/{updated['second'][0]}.png"}
    assert _metrics(grandchild)["n_eval_images"] == _metrics(child)["n_eval_images"] - 1
    assert _metrics(grandchild)["n_known_anomalies"] == 6
    parent, later = BGAD.load(child).model_.state_dict(), BGAD.load(grandchild).model_.state_dict()
    for name, tensor in later.items():
        if "flow" in name and tensor.is_floating_point() and "rotation" not in name:
            assert not torch.equal(tensor, parent[name]), f"{name} was not trained on"
        if "channel_" in name or "position_mean" in name or "whitener" in name:
            assert torch.equal(tensor, parent[name]), f"{name}: the parent's normalization is kept"


def test_an_interrupted_fit_from_resumes_to_the_same_run(
    tiny_run: Path,
    tiny_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    part = tiny_dataset / "part"
    parent = tmp_path / "parent"
    shutil.copytree(tiny_run, parent)
    new = _new_defects(part, tmp_path / "new", _unknown_defects(tiny_run, part, 1))
    whole, resumed, orphan = tmp_path / "whole", tmp_path / "resumed", tmp_path / "orphan"
    assert main(_from(parent, whole, new, epochs=2)) == 0
    with monkeypatch.context() as patch:
        patch.setattr(bgad.method.training, "learning_rate", interrupt_at(meta_epoch=1))
        assert main(_from(parent, resumed, new, epochs=2)) == 130
        assert main(_from(parent, orphan, new, epochs=2)) == 130
    assert not resumed.exists()
    assert partial_folder(resumed).is_dir()
    assert main(["fit", "--resume", str(resumed), "--quiet"]) == 0
    expected, got = BGAD.load(whole).model_.state_dict(), BGAD.load(resumed).model_.state_dict()
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    assert {k: v for k, v in _metrics(resumed).items() if k != "train_seconds"} == {
        k: v for k, v in _metrics(whole).items() if k != "train_seconds"
    }
    with open(parent / "model.json", "a") as handle:
        handle.write("\n")  # the parent's model is no longer the one the interrupted run started from
    capsys.readouterr()
    assert main(["fit", "--resume", str(orphan), "--quiet"]) == 2
    assert_one_line(capsys, "is gone or its model changed")
    assert partial_folder(orphan).is_dir()  # its finished meta-epoch is not thrown away


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--category", "part"], "--category cannot go with it"),
        (["--preset", "default"], "--preset cannot go with it"),
        (["--config", "x.yaml"], "--config cannot go with it"),
        (["--cv", "2"], "--cv cannot go with it"),
        (["--overwrite"], "--overwrite cannot go with it"),
        (["--seed", "1", "--num-anomalies", "2"], "--num-anomalies, --seed cannot go with it"),
        (["--resume", "somewhere"], "--resume cannot go with it"),
    ],
)
def test_options_that_conflict_with_from_are_one_line(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], needle: str
) -> None:
    before = snapshot(tiny_run)
    output = tmp_path / "out"
    capsys.readouterr()
    assert main([*_from(tiny_run, output, tmp_path), *extra]) == 2
    assert_one_line(capsys, needle)
    assert not output.exists()
    assert snapshot(tiny_run) == before


def test_bad_fit_from_requests_are_one_line_and_change_nothing(
    tiny_run: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    part = tiny_dataset / "part"
    known = json.loads((tiny_run / "run.json").read_text())["known_anomalies"][0].removeprefix("test/")
    again = _new_defects(part, tmp_path / "again", [known.removesuffix(".png")])
    fresh = _new_defects(part, tmp_path / "fresh", _unknown_defects(tiny_run, part, 1))
    unmasked = tmp_path / "unmasked"
    shutil.copytree(fresh / "defects", unmasked / "defects")
    (unmasked / "masks").mkdir()
    busy = tmp_path / "busy"
    (busy / "notes.txt").parent.mkdir()
    (busy / "notes.txt").write_text("mine")
    before, busy_before = snapshot(tiny_run), snapshot(busy)
    out = tmp_path / "out"
    cases = [
        (_from(tiny_run, out, again), "already in the training set"),
        (_from(tiny_run, out, unmasked), "has no mask"),
        ([*_from(tiny_run, out, fresh), "--normal-fraction", "0"], "must be in (0, 1]"),
        (_from(tiny_run, tiny_run, fresh), "or inside it"),
        (_from(tiny_run, tiny_run / "child", fresh), "or inside it"),
        (_from(tiny_run, busy, fresh), "is not empty"),
        (_from(tmp_path / "fresh", out, fresh), "not a bgad run"),
        (["fit", "--from", str(tiny_run), "--output", str(out)], "nothing to add"),
        (["fit", "--from", str(tiny_run), "--defect-dir", str(fresh / "defects")], "--output is required"),
        (
            ["fit", "--data-root", str(tiny_dataset), "--category", "part", "--meta-epochs", "2", "--output", str(out)],
            "--meta-epochs and --normal-fraction go with --from",
        ),
    ]
    capsys.readouterr()
    for command, needle in cases:
        assert main(command) == 2, command
        assert_one_line(capsys, needle)
        assert not out.exists()
        assert not partial_folder(out).exists()
    assert snapshot(tiny_run) == before
    assert snapshot(busy) == busy_before
    assert sorted(p.name for p in tiny_run.parent.iterdir()) == ["run"]


def test_a_damaged_lineage_is_one_line(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    description = json.loads((run / "run.json").read_text())
    step = {"parent": {"run": "x"}, "added_anomalies": [], "added_normals": [], "meta_epochs": 1}
    description["lineage"] = [step | {"normal_fraction": 1.0}]
    (run / "run.json").write_text(json.dumps(description))
    capsys.readouterr()
    assert main(["test", "--run", str(run), "--quiet"]) == 2
    assert_one_line(capsys, "is damaged: lineage step 1: parent: 'model_id' is missing")


def test_update_can_train_on_a_seeded_sample_of_the_normals(tiny_run: Path, tiny_dataset: Path) -> None:
    part = tiny_dataset / "part"
    normals = sorted((part / "train" / "good").glob("*.png"))
    defects = sorted((part / "test" / "crack").glob("*.png"))[:2]
    masks = [part / "ground_truth" / "crack" / f"{p.stem}_mask.png" for p in defects]
    parent = BGAD.load(tiny_run)
    half = [parent.update(normals, defects, masks, meta_epochs=1, normal_fraction=0.5, progress=False) for _ in "ab"]
    assert len(half[0].normal_scores_) == len(normals) // 2  # calibrated on the sample
    assert list(half[0].normal_scores_) == list(half[1].normal_scores_)  # the same sample each time
    new = part / "test" / "good" / "000.png"
    more = parent.update(normals, defects, masks, new_normal_images=[new], meta_epochs=1, progress=False)
    assert len(more.normal_scores_) == len(normals) // 2 + 1  # train.update_normal_fraction, and the new image
    whole = parent.update(normals, defects, masks, meta_epochs=1, normal_fraction=1, progress=False)
    assert half[0].history_[0]["steps"] < whole.history_[0]["steps"]
    with pytest.raises(BGADError, match="normal_fraction"):
        parent.update(normals, defects, masks, normal_fraction=0, progress=False)


@pytest.mark.parametrize(("refresh", "pools"), [(None, 1), (1, 3), (2, 2), (10, 1)])
def test_an_update_draws_a_synthetic_pool_every_synthesis_refresh_meta_epochs(
    tiny_run: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch, refresh: int | None, pools: int
) -> None:
    part = tiny_dataset / "part"
    normals = sorted((part / "train" / "good").glob("*.png"))
    defects = sorted((part / "test" / "crack").glob("*.png"))[:2]
    masks = [part / "ground_truth" / "crack" / f"{p.stem}_mask.png" for p in defects]
    rounds = []
    source = bgad.detector.synthetic_source

    def counted(*args: object) -> object:
        draw = source(*args)
        return lambda meta_epoch: rounds.append(meta_epoch) or draw(meta_epoch)

    monkeypatch.setattr(bgad.detector, "synthetic_source", counted)
    BGAD.load(tiny_run).update(normals, defects, masks, meta_epochs=3, synthesis_refresh=refresh, progress=False)
    assert len(rounds) == pools  # None: train.update_synthesis_refresh (4: one pool for these 3 meta-epochs)
