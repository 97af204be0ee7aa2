"""Out-of-sample calibration (bgad.method.crossfit): folds, out-of-fold vectors, verdicts that hold on new normals."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from bgad import BGAD, BGADConfig
from bgad.method.crossfit import calibration_folds
from bgad.method.level import FeatureLevel


def test_folds_are_balanced_seeded_and_keep_an_images_tiles_together() -> None:
    folds = calibration_folds(23, 5, seed=3)
    assert sorted(folds.bincount().tolist()) == [4, 4, 5, 5, 5]
    assert torch.equal(folds, calibration_folds(23, 5, seed=3))
    assert not torch.equal(folds, calibration_folds(23, 5, seed=4))
    owner = np.repeat(np.arange(6), 4)  # 6 images of 4 tiles
    tiled = calibration_folds(len(owner), 3, seed=0, owner=owner)
    assert all(len(set(tiled[owner == image].tolist())) == 1 for image in range(6))
    assert calibration_folds(1, 5, seed=0) is None  # one image: in-sample
    assert calibration_folds(10, 0, seed=0) is None  # cross-fitting off
    assert calibration_folds(3, 5, seed=0).unique().numel() == 3  # at most one fold per image


@pytest.mark.parametrize("normalization", ["position", "channel", "none"])
def test_out_of_fold_vectors_use_statistics_of_the_other_folds_only(normalization: str) -> None:
    level = FeatureLevel(6, (2, 3), normalization=normalization, condition_dim=8, n_blocks=1, clamp_alpha=1.9, seed=0)
    features = torch.randn(12, 6, 2, 3, generator=torch.Generator().manual_seed(0)) * 3 + 1
    folds = torch.tensor([0, 1, 2] * 4)
    out = level.cross_fitted_vectors(features, folds)
    for fold in range(3):
        held = folds == fold
        reference = FeatureLevel(
            6, (2, 3), normalization=normalization, condition_dim=8, n_blocks=1, clamp_alpha=1.9, seed=0
        )
        reference.fit_normalization(features[~held])
        torch.testing.assert_close(out[held], reference.vectors(features[held]))
    level.fit_normalization(features)
    if normalization != "none":  # in-sample vectors are not the out-of-fold ones
        assert not torch.allclose(out, level.vectors(features), atol=1e-3)


def _textures(n: int, seed: int, size: int = 64) -> list[np.ndarray]:
    """Good parts of one kind: a fixed pattern plus smooth random texture, different for every image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    pattern = 90 + 60 * np.sin(6 * xx) * np.cos(4 * yy)
    images = []
    for _ in range(n):
        noise = gaussian_filter(rng.normal(size=(size, size, 3)), sigma=(2, 2, 0)) * 120
        images.append(np.clip(pattern[..., None] + noise, 0, 255).astype(np.uint8))
    return images


@pytest.mark.slow
def test_thirty_normals_flag_unseen_normals_at_about_the_target_rate() -> None:
    """Fitted on 30 good images, the threshold for a 10 % false-alarm rate flags about 10 % of 300 unseen good
    images of the same kind. The bounds allow the estimate's own sampling error from 30 normals (± 0.055) and the
    binomial error of 300 (± 0.017); calibrated in sample (bgad 0.2) the same model flags most of them."""
    config = {
        "model": {"image_size": 64, "n_coupling_blocks": 2},
        "train": {"meta_epochs": 3, "fiber_batch": 256, "extract_batch_size": 8},
        "threshold": {"target_fpr": 0.1},
    }
    train, unseen = _textures(30, seed=0), _textures(300, seed=1)
    rates = {}
    for folds in (5, 0):
        settings = BGADConfig.from_dict({**config, "threshold": {"target_fpr": 0.1, "calibration_folds": folds}})
        detector = BGAD(settings).fit(train, progress=False)
        flagged = [p.is_anomalous for p in detector.predict_batch(unseen, batch_size=16)]
        rates[folds] = float(np.mean(flagged))
    assert 0.02 <= rates[5] <= 0.25, rates
    assert rates[0] > 0.5, rates
