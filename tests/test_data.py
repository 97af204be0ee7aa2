from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bgad.config import TrainConfig
from bgad.data.images import read_image, read_mask
from bgad.data.layouts import load_mvtec
from bgad.data.samples import Category, Sample, Split, folds, make_split
from bgad.errors import BGADError

from .conftest import SHARED_DATA, write_category

LAYOUT = {"train": 3, "good": 2, "crack": 4, "hole": 3, "scratch": 5}


def test_category_index(tmp_path: Path) -> None:
    write_category(tmp_path, LAYOUT)
    category = load_mvtec(tmp_path, "cat")
    assert len(category.train) == 3
    assert Counter(s.defect_type for s in category.test) == {"good": 2, "crack": 4, "hole": 3, "scratch": 5}
    assert all(s.mask_path.is_file() for s in category.defects)


def _known(category: Category, n: int, *, seed: int, sampling: str = "stratified") -> tuple[Sample, ...]:
    return make_split(category, TrainConfig(num_anomalies=n, seed=seed, anomaly_sampling=sampling)).known


def test_stratified_selection_and_removal_from_evaluation(tmp_path: Path) -> None:
    write_category(tmp_path, LAYOUT)
    category = load_mvtec(tmp_path, "cat")
    known = _known(category, 7, seed=0)
    counts = Counter(s.defect_type for s in known)
    assert sum(counts.values()) == 7
    assert all(counts[t] >= 2 for t in ("crack", "hole", "scratch"))  # 7 // 3 = 2 per type, 1 extra
    remaining = Split(category, known).evaluation
    assert len(remaining) == len(category.test) - 7
    assert not {s.path for s in known} & {s.path for s in remaining}


def test_selection_depends_only_on_category_and_seed(tmp_path: Path) -> None:
    write_category(tmp_path, LAYOUT)
    category = load_mvtec(tmp_path, "cat")
    first = _known(category, 5, seed=3)
    np.random.seed(123)  # the global RNG must not matter
    assert _known(category, 5, seed=3) == first
    assert any(_known(category, 5, seed=s) != first for s in range(4, 8))


def test_type_with_fewer_images_than_its_share(tmp_path: Path) -> None:
    write_category(tmp_path, {"train": 1, "good": 1, "rare": 1, "common": 9})
    known = _known(load_mvtec(tmp_path, "cat"), 8, seed=0)
    assert Counter(s.defect_type for s in known) == {"rare": 1, "common": 7}


def _empty_train_folder(root: Path) -> None:
    write_category(root, {"good": 1, "crack": 1})
    (root / "cat" / "train" / "good").mkdir(parents=True)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: None, "category folder not found"),
        (lambda root: (root / "cat" / "test").mkdir(parents=True), "no training images"),
        (_empty_train_folder, "no images in"),
    ],
)
def test_layout_errors_name_the_problem(tmp_path: Path, setup, message: str) -> None:
    setup(tmp_path)
    with pytest.raises(BGADError, match=message):
        load_mvtec(tmp_path, "cat")


def test_missing_mask_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    write_category(tmp_path, {"train": 2, "good": 1, "crack": 1}, masks=False)
    category = load_mvtec(tmp_path, "cat")
    assert len(category.problems) == 1
    assert "test/crack/000.png has no mask" in category.problems[0]
    assert not category.defects


def test_missing_data_root() -> None:
    with pytest.raises(BGADError, match="data root not found: /nonexistent"):
        load_mvtec("/nonexistent", "cat")


def test_more_anomalies_than_available(tmp_path: Path) -> None:
    write_category(tmp_path, {"train": 1, "good": 1, "crack": 2})
    with pytest.raises(BGADError, match="3 known anomalies requested but category cat has only 2"):
        _known(load_mvtec(tmp_path, "cat"), 3, seed=0)


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(BGADError, match=r"cannot read image .*broken\.png"):
        read_image(bad)
    with pytest.raises(BGADError, match="image not found"):
        read_mask(tmp_path / "missing.png")


def test_grayscale_and_16_bit_images_become_rgb(tmp_path: Path) -> None:
    Image.fromarray(np.full((5, 7), 200, np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(np.full((5, 7), 40000, np.uint16)).save(tmp_path / "g16.png")
    for name, value in [("g.png", 200), ("g16.png", 40000 >> 8)]:
        image = read_image(tmp_path / name)
        assert image.mode == "RGB"
        assert image.size == (7, 5)
        assert np.asarray(image)[0, 0].tolist() == [value] * 3


@pytest.mark.skipif(not (SHARED_DATA / "bottle").is_dir(), reason="MVTec AD bottle not present in ../shared")
def test_real_bottle_category() -> None:
    category = load_mvtec(SHARED_DATA, "bottle")
    assert len(category.train) == 209
    assert len(category.test) == 83
    known = _known(category, 10, seed=0)
    # 3 defect types: 3 per type plus 1 extra
    assert sorted(Counter(s.defect_type for s in known).values()) in ([3, 3, 4], [3, 4, 3])
    assert len(Split(category, known).evaluation) == 73


def test_random_and_single_type_sampling(tmp_path: Path) -> None:
    write_category(tmp_path, LAYOUT)
    category = load_mvtec(tmp_path, "cat")
    hard = _known(category, 4, seed=0, sampling="type:scratch")
    assert {s.defect_type for s in hard} == {"scratch"}
    assert len(hard) == 4
    uniform = _known(category, 6, seed=0, sampling="random")
    assert len(set(uniform)) == 6
    assert uniform == _known(category, 6, seed=0, sampling="random")


@pytest.mark.parametrize(
    ("n", "sampling", "message"),
    [
        (2, "type:dent", "defect type 'dent' not in category cat"),
        (4, "type:hole", "4 known anomalies requested but defect type hole of category cat has only 3"),
        (2, "sorted", "train.anomaly_sampling has an invalid value 'sorted'"),
    ],
)
def test_sampling_errors(tmp_path: Path, n: int, sampling: str, message: str) -> None:
    write_category(tmp_path, LAYOUT)
    with pytest.raises(BGADError, match=message):
        _known(load_mvtec(tmp_path, "cat"), n, seed=0, sampling=sampling)


def test_folds_deal_every_defect_once_and_spread_the_types(tmp_path: Path) -> None:
    write_category(tmp_path, LAYOUT)  # 4 crack, 3 hole, 5 scratch
    category = load_mvtec(tmp_path, "cat")
    dealt = folds(category, 3, seed=0)
    assert sorted(s.path for fold in dealt for s in fold) == sorted(s.path for s in category.defects)
    assert sorted(len(fold) for fold in dealt) == [4, 4, 4]
    for fold in dealt:
        assert len({s.defect_type for s in fold}) == 3  # every type in every fold
    assert folds(category, 3, seed=0) == dealt
    assert folds(category, 3, seed=1) != dealt


def test_fold_sampling_trains_on_the_other_folds_and_evaluates_on_its_own(tmp_path: Path) -> None:
    write_category(tmp_path, LAYOUT)
    category = load_mvtec(tmp_path, "cat")
    held_out = folds(category, 3, seed=0)[1]
    split = make_split(category, TrainConfig(anomaly_sampling="fold:1/3"))
    assert set(split.known) == set(category.defects) - set(held_out)
    assert {s for s in split.evaluation if s.is_anomalous} == set(held_out)
    assert {s for s in split.evaluation if not s.is_anomalous} == {s for s in category.test if not s.is_anomalous}


def test_all_anomalies(tmp_path: Path) -> None:
    write_category(tmp_path, LAYOUT)
    category = load_mvtec(tmp_path, "cat")
    assert set(_known(category, -1, seed=0)) == set(category.defects)
    assert len(_known(category, -1, seed=0, sampling="type:hole")) == 3


@pytest.mark.parametrize("sampling", ["fold:3/3", "fold:0/1", "fold:a/3", "fold:1", "folds:1/3"])
def test_bad_fold_samplings_are_refused(sampling: str) -> None:
    with pytest.raises(BGADError, match="anomaly_sampling"):
        TrainConfig(anomaly_sampling=sampling)
