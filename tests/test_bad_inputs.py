"""Bad inputs a factory will produce get one clear line, never a traceback, and concurrent fits never mix files."""

import csv
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bgad.app.runs
import bgad.storage.checkpoint
from bgad import BGAD
from bgad.app.cli import main
from bgad.app.locking import lock_path, run_lock
from bgad.app.record import RUN_JSON
from bgad.app.runs import fit_run, partial_folder, resume_run
from bgad.config import BGADConfig, TrainConfig
from bgad.data.checks import DatasetError, check_dataset
from bgad.data.layouts import DatasetSpec, load_folders, load_manifest
from bgad.errors import BGADError
from bgad.storage.model_files import MODEL_JSON
from bgad.storage.serialization import write_atomic

from .conftest import assert_one_line, fit_command
from .test_datasets import folder_dataset

pytestmark = pytest.mark.slow  # trains models end to end


def test_a_second_fit_into_the_same_output_is_refused_while_the_first_runs(
    tiny_dataset: Path, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "run"
    with run_lock(output):  # stands for a first process that is still fitting
        assert main(fit_command(tiny_dataset, output, config_file)) == 2
        err = assert_one_line(capsys, "is being written by process")
        assert str(os.getpid()) in err
        assert not output.exists()
        assert not partial_folder(output).exists()
    assert not lock_path(output).exists()
    assert main(fit_command(tiny_dataset, output, config_file)) == 0  # the lock is gone with its holder
    assert not lock_path(output).exists()


def test_resume_is_refused_while_the_fit_still_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "run"
    partial = partial_folder(output)
    partial.mkdir(parents=True)
    (partial / RUN_JSON).write_text("{}")
    with run_lock(output):
        assert main(["fit", "--resume", str(output)]) == 2
        assert_one_line(capsys, "is being written by process")
    assert (partial / RUN_JSON).read_text() == "{}"


def test_a_lock_file_left_by_a_killed_process_does_not_block(
    tiny_dataset: Path, config_file: Path, tmp_path: Path
) -> None:
    output = tmp_path / "run"
    lock_path(output).write_text("12345")  # its holder is gone, so nothing holds the lock
    assert main(fit_command(tiny_dataset, output, config_file)) == 0


def test_an_output_that_cannot_be_created_fails_before_any_work(
    tiny_dataset: Path, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(fit_command(tiny_dataset, blocker / "runs" / "run", config_file)) == 2
    assert_one_line(capsys, "cannot create")


def test_decompression_bombs_are_one_line_each_and_the_rest_is_scored(
    tiny_run: Path,
    tiny_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bomb = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((200, 200), np.uint8)).save(bomb)
    # PIL refuses images over twice MAX_IMAGE_PIXELS; a small limit makes a 200x200 image a "bomb".
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    good = tiny_dataset / "part" / "test" / "good" / "001.png"
    out = tmp_path / "out"
    assert main(["predict", "--run", str(tiny_run), "--output", str(out), str(bomb), str(good), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert sum("too large to read safely" in line for line in err.splitlines()) == 1
    with open(out / "scores.csv", encoding="utf-8") as handle:
        assert [row["path"] for row in csv.DictReader(handle)] == [str(good)]


def test_check_reports_a_decompression_bomb_in_the_dataset(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset / "part", root / "part")
    Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(root / "part" / "train" / "good" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    assert main(["check", "--data-root", str(root), "--category", "part", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "huge.png is too large to read safely" in err


@pytest.mark.parametrize("batch_size", ["0", "-1", "two"])
def test_predict_batch_size_must_be_positive(
    tiny_run: Path, tmp_path: Path, batch_size: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "predict",
                "--run",
                str(tiny_run),
                "--output",
                str(tmp_path / "o"),
                str(tmp_path),
                "--batch-size",
                batch_size,
            ]
        )
        == 2
    )
    assert "expected a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_predict_output_names_never_collide_and_the_output_folder_is_not_an_input(
    tiny_run: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "incoming"
    source = tiny_dataset / "part" / "test" / "good" / "000.png"
    for relative in ("a/x.png", "b/x.png", "c/x_2.png", "d/X.png"):
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, folder / relative)
    out = folder / "predictions"  # inside the input folder
    for _ in range(2):  # the second run must not score the first one's heatmaps and masks
        assert main(["predict", "--run", str(tiny_run), "--output", str(out), str(folder), "--quiet"]) == 0
        with open(out / "scores.csv", encoding="utf-8") as handle:
            assert len(list(csv.DictReader(handle))) == 4
        assert len(list((out / "heatmaps").iterdir())) == 4
        assert len(list((out / "masks").iterdir())) == 4


@pytest.mark.skipif(os.name != "posix", reason="file names that are not UTF-8 exist on POSIX only")
def test_predict_writes_utf8_scores_for_names_that_are_not_utf8(
    tiny_run: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not valid UTF-8
    shutil.copy(tiny_dataset / "part" / "test" / "good" / "000.png", folder / name)
    shutil.copy(tiny_dataset / "part" / "test" / "good" / "001.png", folder / "plain.png")
    out = tmp_path / "out"
    assert main(["predict", "--run", str(tiny_run), "--output", str(out), str(folder), "--quiet"]) == 0
    rows = (out / "scores.csv").read_bytes().splitlines()
    assert len(rows) == 3
    assert any(b"caf\xe9.png" in row for row in rows)


def _edited_model(tiny_run: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "edited"
    shutil.copytree(tiny_run, copy)
    description = json.loads((copy / MODEL_JSON).read_text())
    edit(description)
    (copy / MODEL_JSON).write_text(json.dumps(description))
    return copy


def _set_model_option(key: str, value):
    return lambda description: description["config"]["model"].__setitem__(key, value)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d.__setitem__("config", []), "a config must be a mapping"),
        (lambda d: d.__setitem__("thresholds", [1, 2]), "is damaged"),
        (lambda d: d["thresholds"].__setitem__("image", math.nan), "thresholds must be finite"),
        (_set_model_option("image_size", 96), "image_size"),
        (_set_model_option("backbone", "efficientnet_lite1"), "backbone"),
        (_set_model_option("resize", "pad"), "resize"),
    ],
    ids=["config-list", "thresholds-list", "nan-threshold", "image-size", "backbone", "resize"],
)
def test_a_model_whose_description_does_not_match_its_weights_does_not_load(
    tiny_run: Path, tmp_path: Path, edit, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    edited = _edited_model(tiny_run, tmp_path, edit)
    with pytest.raises(BGADError, match=needle):
        BGAD.load(edited)
    assert main(["predict", "--run", str(edited), "--output", str(tmp_path / "out"), str(tmp_path), "--quiet"]) == 2
    assert_one_line(capsys, needle)


@pytest.mark.parametrize(
    "content",
    ["{not json", "[]", '{"dataset": {"layout": "mvtec"}, "config": {}, "known_anomalies": 3, "known_types": []}'],
    ids=["not-json", "not-an-object", "wrong-types"],
)
def test_a_damaged_run_json_is_one_line_on_test_and_resume(
    tiny_run: Path, tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    (copy / RUN_JSON).write_text(content)
    assert main(["test", "--run", str(copy), "--quiet"]) == 2
    assert_one_line(capsys, str(copy / RUN_JSON))
    interrupted = tmp_path / "interrupted"
    partial_folder(interrupted).mkdir()
    (partial_folder(interrupted) / RUN_JSON).write_text(content)
    assert main(["fit", "--resume", str(interrupted), "--quiet"]) == 2
    assert_one_line(capsys, RUN_JSON)


def test_duplicates_name_the_way_forward_and_drop_duplicates_takes_it(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "part")
    (root / "test_good").mkdir()
    shutil.copy(root / "good" / "g01.png", root / "test_good" / "renamed_copy.png")
    shutil.copy(root / "good" / "g02.png", root / "test_good" / "other.png")
    category = load_folders(root / "good", [root / "defects"], [root / "masks"], test_normal_dirs=[root / "test_good"])
    refused = check_dataset(category, TrainConfig(num_anomalies=3), progress=False)
    assert len(refused.problems) == 2
    assert all("--drop-duplicates" in problem for problem in refused.problems)
    report = check_dataset(category, TrainConfig(num_anomalies=3), drop_duplicates=True, progress=False)
    assert report.ok
    assert "2 evaluation image(s) identical to a training image were dropped" in report.notes[0]
    assert not any(s.path.parent.name == "test_good" for s in report.split.category.test)
    assert len(report.split.category.test) == len(category.test) - 2


def test_reserved_type_names_and_files_that_are_not_regular_are_rejected(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "part")
    shutil.copytree(root / "defects" / "crack", root / "defects" / "good")
    with pytest.raises(BGADError, match="reserved for normal images"):
        load_folders(root / "good", [root / "defects"], [root / "masks"])
    manifest = tmp_path / "list.csv"
    rows = ["path,label,mask,split,defect_type", "part/good/g00.png,normal,,train,"]
    rows += ["part/good/g01.png,normal,,test,", "part/defects/dent/000.png,anomaly,,test,good"]
    if Path("/dev/zero").exists():
        rows.append("/dev/zero,normal,,train,")
    manifest.write_text("\n".join(rows) + "\n")
    category = load_manifest(manifest, unmasked="image-only")
    report = check_dataset(category, TrainConfig(num_anomalies=0), progress=False)  # must not hang or fill the memory
    text = "\n".join(report.problems)
    assert "reserved for normal images" in text
    if Path("/dev/zero").exists():
        assert "/dev/zero: not a regular file" in text


def test_test_leaves_out_the_training_anomalies_in_a_copy_of_the_data(
    tiny_run: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dataset / "part", copy / "part")
    capsys.readouterr()
    assert main(["test", "--run", str(tiny_run), "--data-root", str(copy), "--category", "part", "--quiet"]) == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)
    assert metrics["n_eval_images"] == json.loads((tiny_run / "metrics.json").read_text())["n_eval_images"]
    assert "3 training anomalies found in this data were left out" in captured.err


def test_resume_repeats_the_dataset_check_and_refuses_changed_training_images(
    tiny_dataset: Path, tiny_config: BGADConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset / "part", root / "part")
    spec = DatasetSpec("mvtec", {"data_root": str(root), "category": "part"})
    output = tmp_path / "run"

    def failing_evaluate(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(bgad.app.runs, "evaluate", failing_evaluate)
        with pytest.raises(BGADError, match="--resume"):
            fit_run(spec, output, tiny_config, progress=False)
    train = root / "part" / "train" / "good"
    shutil.copy(next(train.iterdir()), train / "added.png")
    with pytest.raises(BGADError, match="training images changed"):
        resume_run(output, progress=False)
    (train / "added.png").unlink()
    (root / "part" / "test" / "good" / "000.png").write_bytes(b"damaged")
    with pytest.raises(DatasetError):  # the check runs again on resume
        resume_run(output, progress=False)
    assert (partial_folder(output) / MODEL_JSON).is_file()


def test_fit_leaves_the_callers_torch_random_state_alone(tiny_dataset: Path, tiny_config: BGADConfig) -> None:
    normals = sorted((tiny_dataset / "part" / "train" / "good").iterdir())[:4]
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    BGAD(tiny_config).fit(normals, [], [], progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_atomic_writes_make_the_rename_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints, ONNX exports and benchmark plans are written by write_atomic."""
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.path.isdir(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    write_atomic(tmp_path / "state.json", b"{}")
    assert (tmp_path / "state.json").read_bytes() == b"{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    if os.name == "posix" and Path("/proc/self/fd").is_dir():
        assert synced == [False, True]  # the file's data, then the folder entry of the rename
