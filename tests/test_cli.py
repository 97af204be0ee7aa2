import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bgad.app.cli import main

pytestmark = pytest.mark.slow  # trains models end to end


def test_fit_writes_a_complete_run(tiny_run: Path) -> None:
    names = {p.name for p in tiny_run.iterdir()}
    expected = {"model.safetensors", "model.json", "run.json", "metrics.json", "train_log.jsonl", "known_anomalies.txt"}
    assert names == expected | {"report.html", "report_files"}
    assert "Pixel AUROC" in (tiny_run / "report.html").read_text()
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    expected = metrics["operating_point"]  # what the threshold was set to do, from 12 out-of-fold normal scores
    assert expected["calibration_normals"] == 12
    assert 0 < expected["expected_false_alarm_rate"] <= 0.01 + 1e-9
    assert expected["known_anomalies"] == 3
    assert "out-of-sample normal scores" in (tiny_run / "report.html").read_text()
    for key in ["image_auroc", "pixel_auroc", "pixel_aupro", "image_ap", "pixel_ap"]:
        assert 0 <= metrics[key] <= 1
    assert metrics["n_known_anomalies"] == 3
    assert metrics["n_eval_images"] == 4 + 9 - 3  # good + defects - known anomalies
    assert len((tiny_run / "known_anomalies.txt").read_text().splitlines()) == 3
    assert len((tiny_run / "train_log.jsonl").read_text().splitlines()) == 3
    assert not list(tiny_run.parent.glob(".run.*")), "the staging folder must be gone"


def test_test_command_reproduces_the_fit_metrics(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["test", "--run", str(tiny_run), "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((tiny_run / "metrics.json").read_text())
    saved.pop("train_seconds")
    per_type, printed_per_type = saved.pop("per_type"), printed.pop("per_type")
    decided, printed_decided = saved.pop("at_thresholds"), printed.pop("at_thresholds")
    assert printed.pop("operating_point") == pytest.approx(saved.pop("operating_point"))
    assert printed == pytest.approx(saved)
    for level in ("image", "pixel"):  # the same thresholds on the same maps: the same decisions
        assert printed_decided.pop(level) == decided.pop(level)
    assert printed_decided == pytest.approx(decided)
    assert printed_per_type.keys() == per_type.keys()
    for defect_type, values in per_type.items():
        assert printed_per_type[defect_type] == pytest.approx(values)


def _one_line_error(capsys: pytest.CaptureFixture[str], needle: str) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("bgad: error:")
    assert needle in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--data-root", "/nonexistent"], "data root not found: /nonexistent"),
        (["--category", "nope"], "category folder not found"),
        (["--num-anomalies", "50"], "50 known anomalies requested"),
        (["--preset", "nope"], "invalid choice: 'nope'"),
        (["--config", "/nonexistent.yaml"], "cannot read config file"),
    ],
)
def test_fit_user_errors(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], needle: str
) -> None:
    output = tmp_path / "out"
    args = {"--data-root": str(tiny_dataset), "--category": "part", "--output": str(output)}
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        args[flag] = value
    assert main(["fit", *[x for kv in args.items() for x in kv], "--quiet"]) == 2
    _one_line_error(capsys, needle)
    assert not output.exists()
    assert not list(tmp_path.iterdir())


def test_unreadable_training_image_leaves_nothing(
    tiny_dataset: Path, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset / "part", data / "part")
    (data / "part" / "train" / "good" / "003.png").write_bytes(b"broken")
    output = tmp_path / "out"
    args = ["fit", "--data-root", str(data), "--category", "part", "--output", str(output)]
    assert main([*args, "--config", str(config_file), "--num-anomalies", "3", "--quiet"]) == 2
    _one_line_error(capsys, "003.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_existing_output_needs_overwrite(
    tiny_run: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["fit", "--data-root", str(tiny_dataset), "--category", "part", "--output", str(tiny_run), "--quiet"]
    assert main(args) == 2
    _one_line_error(capsys, "already holds a run")


def test_test_command_on_a_folder_that_is_no_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", "--run", str(tmp_path)]) == 2
    _one_line_error(capsys, "not a bgad run")


def test_predict_writes_scores_heatmaps_and_masks(
    tiny_run: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    shutil.copy(tiny_dataset / "part" / "test" / "crack" / "000.png", folder / "a.png")
    Image.fromarray(np.zeros((40, 70), np.uint8)).save(folder / "gray_odd_size.bmp")
    (folder / "nested").mkdir()
    shutil.copy(tiny_dataset / "part" / "test" / "good" / "000.png", folder / "nested" / "a.png")  # same stem
    out = tmp_path / "out"
    assert main(["predict", "--run", str(tiny_run), "--output", str(out), str(folder), "--quiet"]) == 0
    with open(out / "scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    assert {r["is_anomalous"] for r in rows} <= {"0", "1"}
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == ["a.png", "a_2.png", "gray_odd_size.png"]
    with Image.open(out / "masks" / "gray_odd_size_mask.png") as mask:
        assert mask.size == (70, 40)
    with Image.open(out / "heatmaps" / "gray_odd_size.png") as heatmap:
        assert heatmap.size == (70, 40)


@pytest.mark.parametrize(("maps", "folders"), [("masks", ["masks"]), ("none", [])])
def test_predict_writes_only_the_maps_asked_for(
    tiny_run: Path, tiny_dataset: Path, tmp_path: Path, maps: str, folders: list[str]
) -> None:
    images = tiny_dataset / "part" / "test" / "crack"
    out = tmp_path / "out"
    assert main(["predict", "--run", str(tiny_run), "--output", str(out), str(images), "--maps", maps, "--quiet"]) == 0
    with open(out / "scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(list(images.iterdir()))
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == folders
    assert all(len(list((out / folder).iterdir())) == len(rows) for folder in folders)


def test_predict_review_needs_the_heatmaps(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["predict", "--run", str(tiny_run), "--output", str(tmp_path / "out"), str(tmp_path), "--quiet"]
    assert main([*args, "--maps", "masks", "--review", "3"]) == 2
    _one_line_error(capsys, "--review shows the heatmaps")
    assert not (tmp_path / "out").exists()


def test_predict_reports_bad_inputs_and_finishes_the_rest(
    tiny_run: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tiny_dataset / "part" / "test" / "good" / "001.png"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tiny)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    args = ["predict", "--run", str(tiny_run), "--output", str(out), str(good), str(broken), str(tiny), str(empty)]
    assert main([*args, str(tmp_path / "missing.png"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "cannot read image" in err
    assert "smaller than the network's stride" in err
    assert "no images in folder" in err
    assert "not found" in err
    assert "Traceback" not in err
    with open(out / "scores.csv") as handle:
        assert [r["path"] for r in csv.DictReader(handle)] == [str(good)]


def test_export_then_predict_with_onnx_matches_torch(tiny_run: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    images = [tiny_dataset / "part" / "test" / "crack" / "001.png", tiny_dataset / "part" / "test" / "good" / "002.png"]
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", "--run", str(tiny_run), "--output", str(onnx_file)]) == 0
    outputs = {}
    for engine, model in [("torch", tiny_run), ("onnx", onnx_file)]:
        out = tmp_path / engine
        assert main(["predict", "--run", str(model), "--engine", engine, "--output", str(out), *map(str, images)]) == 0
        with open(out / "scores.csv") as handle:
            outputs[engine] = list(csv.DictReader(handle))
    for torch_row, onnx_row in zip(outputs["torch"], outputs["onnx"], strict=True):
        assert float(onnx_row["score"]) == pytest.approx(float(torch_row["score"]), abs=2e-5)
        assert onnx_row["is_anomalous"] == torch_row["is_anomalous"]


def test_hard_setting_reports_seen_and_unseen_types(tiny_dataset: Path, config_file: Path, tmp_path: Path) -> None:
    output = tmp_path / "hard"
    args = ["fit", "--data-root", str(tiny_dataset), "--category", "part", "--output", str(output)]
    args += ["--config", str(config_file), "--num-anomalies", "2", "--anomaly-sampling", "type:spot", "--quiet"]
    assert main(args) == 0
    per_type = json.loads((output / "metrics.json").read_text())["per_type"]
    assert {k: v["seen"] for k, v in per_type.items() if k != "unseen_mean"} == {
        "crack": False,
        "scratch": False,
        "spot": True,
    }
    assert per_type["spot"]["n_images"] == 1  # 3 spots, 2 used for training
    unseen = [per_type[t]["image_auroc"] for t in ("crack", "scratch")]
    assert per_type["unseen_mean"]["image_auroc"] == pytest.approx(sum(unseen) / 2)
    assert (output / "known_anomalies.txt").read_text().count("test/spot/") == 2


def test_ablate_trains_four_variants_and_writes_the_table(
    tiny_dataset: Path, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["ablate", "--data-root", str(tiny_dataset), "--category", "part", "--output", str(tmp_path)]
    assert main([*args, "--config", str(config_file), "--num-anomalies", "3", "--quiet"]) == 0
    table = (tmp_path / "ablation.md").read_text()
    assert table == capsys.readouterr().out.rstrip("\n") + "\n"
    for variant in ["one-class flow", "+ BG-SPP", "+ CutPaste", "+ focal weights"]:
        assert variant in table
    assert len([p for p in tmp_path.iterdir() if (p / "metrics.json").is_file()]) == 4
    one_class_log = (tmp_path / "one-class-flow-ml-only" / "train_log.jsonl").read_text()
    assert "bg-spp" not in one_class_log


def test_python_dash_m_bgad_is_the_command_line() -> None:
    import subprocess
    import sys

    import bgad

    done = subprocess.run([sys.executable, "-m", "bgad", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert bgad.__version__ in done.stdout + done.stderr
