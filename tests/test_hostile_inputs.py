"""Inputs an attacker (or an unlucky line) would send: each gets one line naming the problem, or is made harmless,
never a traceback, a verdict from a model that cannot score, or a file of the user's overwritten
(docs/reliability.md lists them)."""

import csv
import errno
import io
import json
import re
import shutil
import socket
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bgad import BGAD
from bgad.app.cli import main
from bgad.app.csv_cells import safe_cell
from bgad.app.record import RUN_JSON
from bgad.app.runs import install_run
from bgad.data.images import decode_image, read_image, read_mask
from bgad.errors import BGADError
from bgad.storage.model_files import MODEL_JSON

from .conftest import assert_one_line, fit_command, snapshot

PROMISED = ["PNG", "JPEG", "BMP", "TIFF"]
REFUSED = ["GIF", "WEBP", "PPM", "TGA", "PCX", "SGI", "JPEG2000", "DDS", "EPS", "QOI"]


def _encoded(format_name: str) -> bytes:
    buffer = io.BytesIO()
    try:
        Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(buffer, format=format_name)
    except (KeyError, OSError) as err:  # a format this PIL cannot write (a missing codec)
        pytest.skip(f"PIL cannot write {format_name}: {err}")
    return buffer.getvalue()


@pytest.mark.parametrize("format_name", REFUSED)
def test_only_the_promised_formats_are_decoded(format_name: str, tmp_path: Path) -> None:
    data = _encoded(format_name)
    path = tmp_path / "looks_like.png"  # the name does not choose the decoder
    path.write_bytes(data)
    message = "not a PNG, JPEG, BMP or TIFF image"
    with pytest.raises(BGADError, match=f"cannot read image upload.png: {message}$"):
        decode_image(data, "upload.png")  # the upload is named, not a BytesIO object
    with pytest.raises(BGADError, match=f"{message}$"):
        read_image(path)
    with pytest.raises(BGADError, match=f"{message}$"):
        read_mask(path)


@pytest.mark.parametrize("format_name", PROMISED)
def test_the_promised_formats_are_decoded(format_name: str) -> None:
    assert decode_image(_encoded(format_name), "upload").size == (40, 40)


def test_a_decompression_bomb_names_the_file_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(BGADError) as raised:
        decode_image(_encoded("PNG"), "big.png")
    assert str(raised.value).count("big.png") == 1
    assert "too large to read safely" in str(raised.value)


CELLS = ['=HYPERLINK("http://x")', "+1", "-2", "@SUM(A1)", "\tx", "\rx", "plain.png", "/abs/=x.png", "a=b"]


def test_csv_cells_that_a_spreadsheet_would_run_are_prefixed() -> None:
    assert [safe_cell(c) for c in CELLS[:6]] == ["'" + c for c in CELLS[:6]]
    assert [safe_cell(c) for c in CELLS[6:]] == CELLS[6:]


def test_the_pages_csv_download_prefixes_the_same_cells() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node to run the page's script")
    page = resources.files("bgad.app").joinpath("static/index.html").read_text(encoding="utf-8")
    function = re.search(r"^function csvCell\(value\) \{.*\}$", page, re.MULTILINE).group(0)
    script = f"{function}\nconsole.log(JSON.stringify({json.dumps(CELLS)}.map(csvCell)));"
    output = subprocess.run([node, "-e", script], capture_output=True, text=True, check=True).stdout
    expected = ['"' + safe_cell(c).replace('"', '""') + '"' for c in CELLS]
    assert json.loads(output) == expected


@pytest.mark.slow
def test_predict_writes_formula_like_names_as_text_and_each_image_once(
    tiny_run: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    name = '=HYPERLINK("evil",1).png'
    shutil.copy(tiny_dataset / "part" / "test" / "good" / "000.png", name)
    out = tmp_path / "out"
    assert main(["predict", "--run", str(tiny_run), "--output", str(out), name, name, f"./{name}", "--quiet"]) == 0
    with open(out / "scores.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["path"] for row in rows] == ["'" + name]  # the same file given three times is scored once
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == [Path(name).name]


@pytest.mark.slow
def test_predict_never_writes_over_files_it_did_not_write(
    tiny_run: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = str(tiny_dataset / "part" / "test" / "good" / "000.png")
    users = tmp_path / "users"
    users.mkdir()
    (users / "scores.csv").write_text("my own scores\n")
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    before = snapshot(copy)
    for output, needle in ((users, "holds files bgad predict did not write"), (copy, "is a run or model folder")):
        assert main(["predict", "--run", str(tiny_run), "--output", str(output), image, "--quiet"]) == 2
        assert_one_line(capsys, needle)
    assert (users / "scores.csv").read_text() == "my own scores\n"
    assert snapshot(copy) == before
    out = tmp_path / "out"
    for _ in range(2):  # an earlier prediction's folder is written over
        assert main(["predict", "--run", str(tiny_run), "--output", str(out), image, "--quiet"]) == 0


@pytest.mark.slow
def test_a_write_error_names_the_file(
    tiny_run: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def too_large(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EFBIG, "File too large")  # as a write past `ulimit -f` fails: no file name

    monkeypatch.setattr(Image.Image, "save", too_large)
    image = str(tiny_dataset / "part" / "test" / "good" / "000.png")
    assert main(["predict", "--run", str(tiny_run), "--output", str(tmp_path / "o"), image, "--quiet"]) == 2
    assert_one_line(capsys, f"File too large: '{tmp_path / 'o' / 'heatmaps' / '000.png'}'")


def _calibration_data(tiny_dataset: Path, root: Path, mask: np.ndarray) -> list[str]:
    """``calibrate`` options for the tiny dataset's good test images and one defect with ``mask``."""
    part = tiny_dataset / "part"
    (root / "defects").mkdir(parents=True)
    (root / "masks").mkdir()
    shutil.copy(part / "test" / "crack" / "000.png", root / "defects" / "000.png")
    Image.fromarray(mask).save(root / "masks" / "000_mask.png")
    normal = str(part / "test" / "good")
    return ["--normal-dir", normal, "--defect-dir", str(root / "defects"), "--mask-dir", str(root / "masks")]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mask", "needle"),
    [(np.zeros((64, 64), np.uint8), "is empty"), (np.full((16, 64), 255, np.uint8), "is 64x16 but its image")],
    ids=["empty-mask", "mask-of-another-size"],
)
def test_calibrate_checks_its_images_as_check_does(
    mask: np.ndarray, needle: str, tiny_run: Path, tiny_dataset: Path, tmp_path: Path, capsys
) -> None:
    options = _calibration_data(tiny_dataset, tmp_path / "data", mask)
    output = tmp_path / "calibrated"
    assert main(["calibrate", "--run", str(tiny_run), "--output", str(output), *options]) == 2
    assert_one_line(capsys, needle)
    assert not output.exists()


@pytest.mark.slow
def test_calibrate_refuses_an_output_inside_the_run(
    tiny_run: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = snapshot(run)
    normal = str(tiny_dataset / "part" / "test" / "good")
    assert main(["calibrate", "--run", str(run), "--normal-dir", normal, "--output", str(run / "sub")]) == 2
    assert_one_line(capsys, "is inside")
    assert snapshot(run) == before


@pytest.mark.slow
def test_overwrite_through_a_symbolic_link_is_refused_before_training(
    tiny_run: Path, tiny_dataset: Path, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "lk"
    shutil.copytree(tiny_run, target)
    before = snapshot(target)
    latest = tmp_path / "latest"
    latest.symlink_to(target)
    for _ in range(2):  # the same answer every time, nothing trained
        assert main(fit_command(tiny_dataset, latest, config_file, "--overwrite")) == 2
        assert_one_line(capsys, "is a symbolic link")
    assert main(["fit", "--resume", str(latest)]) == 2
    assert_one_line(capsys, "no interrupted fit")
    assert latest.is_symlink()
    assert snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "lk"]


def test_a_link_left_aside_by_an_older_bgad_is_removed_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    output, partial = tmp_path / "run", tmp_path / ".run.partial"
    for folder in (output, partial):
        folder.mkdir()
        (folder / RUN_JSON).write_text("{}")
        (folder / MODEL_JSON).write_text("{}")
    (partial / "new.txt").write_text("new")
    (tmp_path / ".run.replaced").symlink_to(victim)
    install_run(partial, output)
    assert (output / "new.txt").is_file()
    assert (victim / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "victim"]


@pytest.mark.parametrize("port", ["99999", "-1", "0", "http"])
def test_serve_refuses_a_port_that_is_not_one(port: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--run", str(tmp_path), "--port", port]) == 2
    assert_one_line(capsys, "expected a port number from 1 to 65535")


def test_serve_on_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main(["serve", "--run", str(tmp_path), "--host", "127.0.0.1", "--port", port]) == 2
    assert_one_line(capsys, f"cannot listen on 127.0.0.1:{port}")


def test_a_config_file_that_is_no_file_or_too_large_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    large = tmp_path / "large.yaml"
    large.write_text("# padding\n" * 200_000)
    cases = [(large, "is over 1048576 bytes")]
    if Path("/dev/zero").exists():
        cases.append((Path("/dev/zero"), "is not a regular file"))  # would be read until the memory runs out
    for config, needle in cases:
        data = ["--data-root", str(tmp_path), "--category", "c"]
        assert main(["fit", *data, "--output", str(tmp_path / "run"), "--config", str(config)]) == 2
        assert_one_line(capsys, needle)
    assert not (tmp_path / "run").exists()


def test_a_file_that_is_not_an_export_is_not_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    description = tmp_path / "model.json"
    description.write_text("{}")
    assert main(["predict", "--run", str(description), "--output", str(tmp_path / "o"), str(tmp_path)]) == 2
    assert_one_line(capsys, f"is not a model: give a run or model folder ({tmp_path}?)")


@pytest.mark.slow
def test_identical_models_are_identical_bytes(tiny_run: Path, tmp_path: Path) -> None:
    detector = BGAD.load(tiny_run)
    for index in range(6):  # safetensors' metadata order changes from one save to the next
        detector.save(tmp_path / str(index))
    weights = {(tmp_path / str(index) / "model.safetensors").read_bytes() for index in range(6)}
    assert len(weights) == 1
    assert BGAD.load(tmp_path / "0").thresholds_ == detector.thresholds_


@pytest.mark.slow
def test_serve_needs_nothing_from_a_cdn(tiny_run: Path) -> None:
    testclient = pytest.importorskip("fastapi.testclient")
    from bgad.app.serve import Scorer, create_app, model_description

    detector = BGAD.load(tiny_run)
    scorer = Scorer(detector, model_description(tiny_run, detector), max_pixels=1_000_000)
    with testclient.TestClient(create_app(scorer), base_url="http://localhost") as client:
        assert client.get("/docs").status_code == 404
        assert client.get("/redoc").status_code == 404
        assert client.get("/openapi.json").status_code == 200
        page = client.get("/").text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # the page loads nothing from elsewhere
