from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bgad.data.images import read_mask
from bgad.data.layouts import load_mvtec
from bgad.data.synthetic_pool import SyntheticAnomalies
from bgad.errors import BGADError


@pytest.fixture
def sources(tiny_dataset: Path) -> tuple[list[Path], list[Path], list[np.ndarray]]:
    category = load_mvtec(tiny_dataset, "part")
    defects = category.defects[:2]
    return [s.path for s in category.train[:4]], [s.path for s in defects], [read_mask(s.mask_path) for s in defects]


def test_cutpaste_pool_size_masks_and_determinism(sources) -> None:
    normals, known, masks = sources
    pool = SyntheticAnomalies("cutpaste", normals, known, masks, repeats=3, foreground="auto", seed=0)
    assert pool.pool_size == 6
    images, labels = pool.draw(1)
    assert len(images) == len(labels) == 6
    for image, label in zip(images, labels, strict=True):
        assert image.shape == (64, 64, 3)
        assert label.shape == (64, 64)
        assert label.any()
    again, _ = SyntheticAnomalies("cutpaste", normals, known, masks, repeats=3, foreground="auto", seed=0).draw(1)
    assert all(np.array_equal(a, b) for a, b in zip(images, again, strict=True))
    other, _ = pool.draw(2)
    assert not all(np.array_equal(a, b) for a, b in zip(images, other, strict=True))


def test_nsa_needs_no_known_anomaly(sources) -> None:
    normals, _, _ = sources
    pool = SyntheticAnomalies("nsa", normals, [], [], repeats=1, foreground="full", seed=0)
    assert pool.active
    images, labels = pool.draw(0)
    assert len(images) == 10
    assert all(label.any() for label in labels)


def test_cutpaste_without_known_anomalies_is_inactive(sources) -> None:
    normals, _, _ = sources
    assert not SyntheticAnomalies("cutpaste", normals, [], [], repeats=5, foreground="auto", seed=0).active


def test_foreground_folder(sources, tmp_path: Path) -> None:
    normals, known, masks = sources
    for path in normals:
        Image.fromarray(np.full((64, 64), 255, np.uint8)).save(tmp_path / f"{path.stem}.png")
    pool = SyntheticAnomalies("cutpaste", normals, known, masks, repeats=1, foreground=str(tmp_path), seed=0)
    assert len(pool.draw(0)[0]) == 2
    (tmp_path / f"{normals[0].stem}.png").unlink()
    (tmp_path / f"{normals[1].stem}.png").unlink()
    missing = SyntheticAnomalies("cutpaste", normals, known, masks, repeats=4, foreground=str(tmp_path), seed=0)
    with pytest.raises(BGADError, match="image not found"):
        missing.draw(0)
