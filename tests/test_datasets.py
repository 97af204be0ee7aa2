"""Dataset layouts: plain folders with differently named masks, a CSV manifest, BTAD and VisA; mask matching."""

import csv
import shutil
import string
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from bgad.config import TrainConfig
from bgad.data.layouts import LAYOUTS, DatasetSpec, load_folders, load_manifest
from bgad.data.layouts.files import MASK_SUFFIXES, MaskIndex
from bgad.data.samples import GOOD, make_split
from bgad.errors import BGADError


def _png(path: Path, value: int = 128, size: tuple[int, int] = (32, 32), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)
    return path


def _mask(path: Path, size: tuple[int, int] = (32, 32)) -> Path:
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[4:9, 4:9] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)
    return path


def folder_dataset(root: Path) -> Path:
    """good/ (10), defects/crack (3, masks masks/crack/<stem>_label.png), defects/dent (2, masks beside them as
    <stem>_mask.png), defects/hole (2, masks masks/hole/<stem>.bmp: same stem, another extension)."""
    for i in range(10):
        _png(root / "good" / f"g{i:02d}.png", 100 + i)
    for i in range(3):
        _png(root / "defects" / "crack" / f"{i:03d}.png", 10 + i)
        _mask(root / "masks" / "crack" / f"{i:03d}_label.png")
    for i in range(2):
        _png(root / "defects" / "dent" / f"{i:03d}.png", 30 + i)
        _mask(root / "defects" / "dent" / f"{i:03d}_mask.png")
        _png(root / "defects" / "hole" / f"{i:03d}.png", 50 + i)
        _mask(root / "masks" / "hole" / f"{i:03d}.bmp")
    return root


def folder_options(root: Path) -> list[str]:
    """The ``bgad`` data options of a dataset laid out as ``root/good``, ``root/defects``, ``root/masks``."""
    return [
        "--normal-dir",
        str(root / "good"),
        "--defect-dir",
        str(root / "defects"),
        "--mask-dir",
        str(root / "masks"),
    ]


def test_folder_dataset_matches_differently_named_masks(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "part")
    category = load_folders(root / "good", [root / "defects"], [root / "masks"])
    assert category.name == "part"
    assert not category.problems
    defects = [s for s in category.test if s.is_anomalous]
    assert sorted({s.defect_type for s in defects}) == ["crack", "dent", "hole"]
    assert len(defects) == 7, "the masks beside the dent images are not images"
    for sample in defects:
        assert sample.mask_path is not None
        assert sample.mask_path.parent.name == sample.defect_type
        assert sample.mask_path.stem.lower().startswith(sample.path.stem)
    held_out = [s for s in category.test if not s.is_anomalous]
    assert len(held_out) == 2
    assert len(category.train) == 8
    assert not {s.path for s in held_out} & {s.path for s in category.train}
    again = load_folders(root / "good", [root / "defects"], [root / "masks"])
    assert again == category, "the held-out split is deterministic"


def test_test_normal_dir_replaces_the_split(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "part")
    for i in range(3):
        _png(root / "more_good" / f"t{i}.png", 200 + i)
    category = load_folders(root / "good", [root / "defects" / "crack"], [root / "masks"], [root / "more_good"])
    assert len(category.train) == 10
    assert [s.path.name for s in category.test if not s.is_anomalous] == ["t0.png", "t1.png", "t2.png"]
    assert {s.defect_type for s in category.test if s.is_anomalous} == {"crack"}


def test_defect_without_mask_is_a_problem_or_image_level_only(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "part")
    _png(root / "defects" / "crack" / "lonely.png", 5)
    strict = load_folders(root / "good", [root / "defects"], [root / "masks"])
    assert len(strict.problems) == 1
    assert "lonely.png has no mask" in strict.problems[0]
    lenient = load_folders(root / "good", [root / "defects"], [root / "masks"], unmasked="image-only")
    assert not lenient.problems
    lonely = next(s for s in lenient.test if s.path.name == "lonely.png")
    assert lonely.is_anomalous
    assert not lonely.has_pixel_labels
    assert lonely not in lenient.defects, "image-level-only defects are never known anomalies"


def test_ambiguous_masks_are_reported(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "part")
    _mask(root / "masks" / "crack" / "000_gt.png")
    category = load_folders(root / "good", [root / "defects"], [root / "masks"])
    assert len(category.problems) == 1
    assert "2 candidate masks" in category.problems[0]
    assert "000_gt.png" in category.problems[0]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda root: load_folders(root / "nope"), "normal folder not found"),
        (lambda root: load_folders(root / "good", [root / "nope"]), "defect folder not found"),
        (lambda root: load_folders(root / "good", [root / "defects"], [root / "nope"]), "mask folder not found"),
        (lambda root: load_folders(root / "masks"), "no images in normal folder"),
        (lambda root: load_folders(root / "good", test_normal_ratio=1.0), r"ratio must be in \[0, 1\)"),
        (lambda root: load_folders(root / "good", unmasked="maybe"), "unknown unmasked-defects choice"),
    ],
)
def test_folder_errors(tmp_path: Path, call, message: str) -> None:
    root = folder_dataset(tmp_path / "part")
    shutil.rmtree(root / "masks" / "crack")
    shutil.rmtree(root / "masks" / "hole")
    with pytest.raises(BGADError, match=message):
        call(root)


def _write_manifest(path: Path, rows: list[list[str]], header: str = "path,label,mask,split,defect_type") -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header.split(","))
        writer.writerows(rows)
    return path


def test_manifest_assigns_known_anomalies_itself(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "part")
    rows = [[f"good/g{i:02d}.png", "normal", "", "train" if i < 7 else "test", ""] for i in range(10)]
    rows += [["defects/crack/000.png", "anomaly", "masks/crack/000_label.png", "train", "crack"]]
    rows += [[f"defects/hole/{i:03d}.png", "ANOMALY", f"masks/hole/{i:03d}.bmp", "test", "hole"] for i in range(2)]
    rows += [["defects/dent/000.png", "1", "", "test", ""]]
    category = load_manifest(_write_manifest(root / "list.csv", rows), unmasked="image-only")
    assert not category.problems
    assert (len(category.train), len(category.test)) == (7, 3 + 3)
    assert [s.path.name for s in category.known] == ["000.png"]
    assert make_split(category, TrainConfig(num_anomalies=10, seed=0)).known == category.known, (
        "the manifest's choice wins"
    )
    dent = next(s for s in category.test if s.path.parent.name == "dent")
    assert dent.defect_type == "defect"
    assert not dent.has_pixel_labels
    assert category.relative(category.known[0].path) == "defects/crack/000.png"


def test_manifest_problems_name_the_line(tmp_path: Path) -> None:
    rows = [
        ["a.png", "normal", "", "train", ""],
        ["b.png", "weird", "", "train", ""],
        ["c.png", "normal", "", "validation", ""],
        ["d.png", "anomaly", "", "train", ""],
        ["e.png", "good", "e_mask.png", "test", ""],
    ]
    category = load_manifest(_write_manifest(tmp_path / "m.csv", rows))
    assert category.problems == (
        "m.csv:3: unknown label 'weird' (use normal or anomaly)",
        "m.csv:4: unknown split 'validation' (use train or test)",
        f"m.csv:5: training anomaly {tmp_path / 'd.png'} has no mask (known anomalies need pixel masks)",
        f"m.csv:6: normal image {tmp_path / 'e.png'} has a mask; leave the mask empty or label it anomaly",
    )


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        ("path,label,split", [["a.png", "normal", "train"]], "lacks column"),
        ("path,label,mask,split", [["a.png", "normal", "", "test"]], "lists no normal training images"),
    ],
)
def test_manifest_errors(tmp_path: Path, header: str, rows: list[list[str]], message: str) -> None:
    with pytest.raises(BGADError, match=message):
        load_manifest(_write_manifest(tmp_path / "m.csv", rows, header))
    with pytest.raises(BGADError, match="manifest not found"):
        load_manifest(tmp_path / "missing.csv")


def test_btad_layout(tmp_path: Path) -> None:
    cat = tmp_path / "01"
    for i in range(3):
        _png(cat / "train" / "ok" / f"{i:04d}.bmp", 100 + i)
    _png(cat / "test" / "ok" / "0000.bmp", 90)
    for i in range(2):
        _png(cat / "test" / "ko" / f"{i:04d}.bmp", 10 + i)
        _mask(cat / "ground_truth" / "ko" / f"{i:04d}.png")
    category = DatasetSpec.from_dict({"layout": "btad", "data_root": str(tmp_path), "category": "01"}).load()
    assert not category.problems
    assert len(category.train) == 3
    assert [s.defect_type for s in category.test] == ["ko", "ko", GOOD]  # sorted by path: test/ko < test/ok
    assert all(s.mask_path is not None and s.mask_path.suffix == ".png" for s in category.defects)


def test_visa_layout(tmp_path: Path) -> None:
    (tmp_path / "split_csv").mkdir()
    lines = ["object,split,label,image,mask"]
    for obj in ("candle", "pcb1"):
        for i in range(3):
            lines.append(f"{obj},train,normal,{obj}/Data/Images/Normal/{i:04d}.JPG,")
        lines.append(f"{obj},test,normal,{obj}/Data/Images/Normal/0100.JPG,")
        lines.append(f"{obj},test,anomaly,{obj}/Data/Images/Anomaly/000.JPG,{obj}/Data/Masks/Anomaly/000.png")
    (tmp_path / "split_csv" / "1cls.csv").write_text("\n".join(lines) + "\n")
    category = DatasetSpec.from_dict({"layout": "visa", "data_root": str(tmp_path), "category": "candle"}).load()
    assert category.name == "candle"
    assert not category.problems
    assert len(category.train) == 3
    assert all("candle" in str(s.path) for s in category.train + category.test)
    assert [s.defect_type for s in category.test] == ["anomaly", GOOD]
    with pytest.raises(BGADError, match="object 'cable' not in"):
        DatasetSpec.from_dict({"layout": "visa", "data_root": str(tmp_path), "category": "cable"}).load()


def test_unknown_layout() -> None:
    with pytest.raises(BGADError, match="unknown dataset layout 'coco'"):
        DatasetSpec.from_dict({"layout": "coco"}).load()
    assert set(LAYOUTS) == {"mvtec", "btad", "visa", "folders", "manifest"}


def test_a_spec_names_only_its_loaders_options_and_round_trips() -> None:
    with pytest.raises(BGADError, match=r"unknown option\(s\) root for dataset layout 'mvtec'"):
        DatasetSpec("mvtec", {"root": "/data", "category": "bottle"})
    spec = DatasetSpec("folders", {"normal_dir": "/data/good", "defect_dirs": ["/data/bad"]})
    assert DatasetSpec.from_dict(spec.to_dict()) == spec


_stems = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=12)


@settings(max_examples=40, deadline=None)
@given(
    stems=st.lists(_stems, min_size=1, max_size=6, unique_by=str.lower),
    choices=st.data(),
)
def test_mask_matching_finds_each_generated_mask(stems: list[str], choices: st.DataObject) -> None:
    """Whatever the suffix, case and extension a mask gets, it is matched to its image, or reported as ambiguous
    exactly when another image's mask also fits the name pattern (e.g. image "a_gt" beside mask "a_gt.png" of "a")."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        expected = {}
        for stem in stems:
            image = root / "defects" / f"{stem}.png"
            suffix = choices.draw(st.sampled_from(MASK_SUFFIXES))
            suffix = choices.draw(st.sampled_from([suffix, suffix.upper()]))
            extension = choices.draw(st.sampled_from([".png", ".bmp", ".tif"]))
            image.parent.mkdir(parents=True, exist_ok=True)
            image.touch()
            mask = root / "masks" / f"{stem}{suffix}{extension}"
            mask.parent.mkdir(parents=True, exist_ok=True)
            mask.touch()
            expected[image] = mask
        index = MaskIndex([root / "masks"], images=list(expected))
        for image, mask in expected.items():
            found, problem = index.find(image, "defects")
            names = {image.stem.lower() + suffix.lower() for suffix in MASK_SUFFIXES}
            fitting = [m for m in expected.values() if m.stem.lower() in names]
            assert (found, problem is None) == ((mask, True) if len(fitting) == 1 else (None, False))


_cells = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.lists(_cells, min_size=0, max_size=6), max_size=6), header=st.sampled_from([0, 1]))
def test_any_manifest_content_loads_or_gives_one_clear_error(rows: list[list[str]], header: int) -> None:
    """Fuzz: whatever a CSV holds, loading it returns a dataset (problems listed) or raises BGADError."""
    with tempfile.TemporaryDirectory() as tmp:
        fields = ["path,label,mask,split,defect_type", "path,label,mask"][header]
        path = _write_manifest(Path(tmp) / "m.csv", rows, fields)
        try:
            category = load_manifest(path)
        except BGADError as err:
            message = str(err)
        else:
            message = ""
            assert category.train
            assert all(isinstance(problem, str) for problem in category.problems)
        assert "\n" not in message
