"""Image-level-only defects (no mask) count for image metrics and are left out of pixel metrics."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from bgad import metrics
from bgad.data.images import content_box
from bgad.data.samples import Sample
from bgad.evaluation import Evaluation, evaluate, full_resolution_metrics
from bgad.method.features import image_batches
from bgad.method.scoring import resize_maps


class BrightnessMapper:
    """A stand-in detector whose anomaly map is the image's brightness."""

    resize = "stretch"

    def anomaly_maps(self, images, *, batch_size: int = 4) -> torch.Tensor:
        return torch.cat([b.mean(1) for b in image_batches(images, image_size=32, batch_size=batch_size)])


def _image(path: Path, spot: bool, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 100, (32, 32, 3), dtype=np.uint8)
    if spot:
        pixels[8:16, 8:16] = 250
    Image.fromarray(pixels).save(path)
    return path


def test_image_only_defects_count_for_image_metrics_only(tmp_path: Path) -> None:
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:16] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    good = [Sample(_image(tmp_path / f"g{i}.png", False, i)) for i in range(3)]
    masked = [Sample(_image(tmp_path / f"d{i}.png", True, 10 + i), "spot", tmp_path / "m.png") for i in range(2)]
    unmasked = Sample(_image(tmp_path / "u.png", True, 20), "spot")
    with_unmasked = evaluate(BrightnessMapper(), [*good, *masked, unmasked], progress=False)
    without = evaluate(BrightnessMapper(), [*good, *masked], progress=False)
    assert with_unmasked.metrics().n_eval_images == 6
    for key in ("pixel_auroc", "pixel_aupro", "pixel_ap"):
        assert getattr(with_unmasked.metrics(), key) == pytest.approx(getattr(without.metrics(), key))
    scores, labels = with_unmasked.scores, with_unmasked.labels
    assert with_unmasked.metrics().image_auroc == metrics.image_auroc(scores, labels)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    counted_as_normal = metrics.pixel_auroc(with_unmasked.anomaly_maps, with_unmasked.masks)
    assert counted_as_normal < with_unmasked.metrics().pixel_auroc, "the unmasked spot would count as normal"


@pytest.mark.parametrize("resize", ["stretch", "pad"])
def test_full_resolution_metrics_score_each_image_at_its_own_size(tmp_path: Path, resize: str) -> None:
    """Against a brute-force version: every map cropped to its content, resized to its image, pixels pooled."""
    rng = np.random.default_rng(0)
    samples = []
    for i, (h, w) in enumerate([(40, 60), (50, 50), (31, 45)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        mask = np.zeros((h, w), np.uint8)
        if i:
            mask[5 : 5 + 3 * i, 10:20] = 255
            Image.fromarray(mask).save(tmp_path / f"{i}_mask.png")
        samples.append(
            Sample(tmp_path / f"{i}.png", "dent" if i else "good", tmp_path / f"{i}_mask.png" if i else None)
        )
    maps = rng.random((3, 32, 32)).astype(np.float32)
    evaluation = Evaluation(tuple(samples), maps.max(axis=(1, 2)), maps, np.zeros((3, 32, 32), bool), resize=resize)

    scores, labels = [], []
    for sample, amap in zip(samples, maps, strict=True):
        h, w = Image.open(sample.path).size[::-1]
        top, left, bh, bw = content_box(h, w, 32, resize)
        full = resize_maps(torch.from_numpy(amap[top : top + bh, left : left + bw])[None], (h, w))[0].numpy()
        mask = np.asarray(Image.open(sample.mask_path)) > 127 if sample.mask_path else np.zeros((h, w), bool)
        scores.append(full.ravel())
        labels.append(mask.ravel())
    got = full_resolution_metrics(evaluation)
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(np.concatenate(labels), np.concatenate(scores)))
    assert got["pixel_ap"] == pytest.approx(average_precision_score(np.concatenate(labels), np.concatenate(scores)))
    assert 0 <= got["pixel_aupro"] <= 1
