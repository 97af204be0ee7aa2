from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bgad.data.demo import DEFECT_TYPES, make_demo_dataset, render_sample

SMALL = {"n_train": 3, "n_test_good": 2, "n_test_per_defect": 3, "image_size": 64}


def _files(category_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(category_dir)): p.read_bytes() for p in sorted(category_dir.rglob("*.png"))}


def test_layout_counts_and_masks(tmp_path: Path) -> None:
    category_dir = make_demo_dataset(tmp_path, category="part", **SMALL)
    assert category_dir == tmp_path / "part"
    assert sorted(p.name for p in (category_dir / "train" / "good").iterdir()) == [
        "000.png",
        "001.png",
        "002.png",
    ]
    assert sorted(p.name for p in (category_dir / "test" / "good").iterdir()) == ["000.png", "001.png"]
    assert sorted(p.name for p in (category_dir / "test").iterdir()) == sorted(["good", *DEFECT_TYPES])
    assert sorted(p.name for p in (category_dir / "ground_truth").iterdir()) == sorted(DEFECT_TYPES)
    with Image.open(category_dir / "train" / "good" / "000.png") as image:
        assert (image.mode, image.size) == ("RGB", (64, 64))
    for defect in DEFECT_TYPES:
        images = sorted((category_dir / "test" / defect).iterdir())
        assert [p.name for p in images] == ["000.png", "001.png", "002.png"]
        for image_path in images:
            with (
                Image.open(image_path) as image,
                Image.open(category_dir / "ground_truth" / defect / f"{image_path.stem}_mask.png") as mask,
            ):
                assert image.mode == "RGB"
                assert mask.mode == "L"
                assert mask.size == image.size
                values = np.asarray(mask)
            assert set(np.unique(values)) == {0, 255}
            assert 0.001 < (values > 0).mean() < 0.03


@pytest.mark.parametrize("defect", DEFECT_TYPES)
def test_mask_is_exactly_the_changed_region(defect: str) -> None:
    for index in range(5):
        clean, image, mask = render_sample(80, 3, f"test/{defect}", index)
        inside = mask > 0
        np.testing.assert_array_equal(image[~inside], clean[~inside])
        change = np.abs(image[inside].astype(int) - clean[inside].astype(int)).mean()
        assert change > 20, f"{defect} {index}: mean change {change:.1f} grey levels"


def test_good_images_have_no_defect() -> None:
    for stream in ("train/good", "test/good"):
        clean, image, mask = render_sample(64, 0, stream, 0)
        np.testing.assert_array_equal(image, clean)
        assert not mask.any()


def test_files_match_rendered_samples(tmp_path: Path) -> None:
    category_dir = make_demo_dataset(tmp_path, seed=5, **SMALL)
    _, image, mask = render_sample(64, 5, "test/crack", 2)
    np.testing.assert_array_equal(np.asarray(Image.open(category_dir / "test" / "crack" / "002.png")), image)
    mask_path = category_dir / "ground_truth" / "crack" / "002_mask.png"
    np.testing.assert_array_equal(np.asarray(Image.open(mask_path)), mask)


def test_normal_images_vary() -> None:
    train = [render_sample(64, 0, "train/good", i)[1] for i in range(3)]
    test = render_sample(64, 0, "test/good", 0)[1]
    assert not np.array_equal(train[0], train[1])
    assert not np.array_equal(train[0], test)


def test_deterministic_and_overwrites(tmp_path: Path) -> None:
    first = _files(make_demo_dataset(tmp_path / "a", **SMALL))
    second = _files(make_demo_dataset(tmp_path / "b", **SMALL))
    assert first == second
    other_seed = _files(make_demo_dataset(tmp_path / "c", seed=1, **SMALL))
    assert other_seed.keys() == first.keys()
    assert all(other_seed[name] != first[name] for name in first)
    # A second call over an earlier, larger dataset leaves no stale files behind.
    bigger = dict(SMALL, n_train=5)
    make_demo_dataset(tmp_path / "d", **bigger)
    assert _files(make_demo_dataset(tmp_path / "d", **SMALL)) == first


def test_refuses_to_overwrite_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "demo_part").mkdir()
    (tmp_path / "demo_part" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        make_demo_dataset(tmp_path, **SMALL)
    assert (tmp_path / "demo_part" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("n_train", 0),
        ("n_test_good", -1),
        ("n_test_per_defect", 0),
        ("image_size", 32),
        ("seed", -1),
        ("category", ""),
        ("category", "a/b"),
    ],
)
def test_bad_arguments(tmp_path: Path, argument: str, value: object) -> None:
    with pytest.raises(ValueError, match=argument):
        make_demo_dataset(tmp_path, **{**SMALL, argument: value})
    assert not any(tmp_path.iterdir())
