"""A short end-to-end check on real MVTec AD `bottle` images; skipped when ../shared is absent."""

from pathlib import Path

import numpy as np
import pytest

from bgad import BGAD
from bgad.config import BGADConfig
from bgad.data import load_mvtec_category, select_known_anomalies

from .conftest import SHARED_DATA

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "bottle").is_dir(), reason="MVTec AD bottle not in ../shared")


def test_few_real_images_separate_defects_from_good() -> None:
    category = load_mvtec_category(SHARED_DATA, "bottle")
    known = select_known_anomalies(category, 3, seed=0)
    config = BGADConfig.from_dict({"model": {"image_size": 128}, "train": {"meta_epochs": 3, "fiber_batch": 1024}})
    detector = BGAD(config).fit(
        [s.path for s in category.train[:16]], [s.path for s in known], [s.mask_path for s in known], progress=False
    )
    used = {s.path for s in known}
    good = [s.path for s in category.test if not s.is_anomalous][:6]
    defects: list[Path] = [s.path for s in category.test if s.is_anomalous and s.path not in used][::8][:6]
    maps = detector.anomaly_maps(good + defects).numpy()
    scores = maps.reshape(len(maps), -1).max(axis=1)
    # Broken and contaminated bottles are obvious: every defect should outscore the typical good bottle.
    assert np.median(scores[: len(good)]) < scores[len(good) :].min()
