"""Tests for bgad.metrics, including a brute-force AUPRO reference."""

import math
import re

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from bgad.metrics import (
    UndefinedMetricWarning,
    aupro,
    image_ap,
    image_auroc,
    pixel_ap,
    pixel_auroc,
    pro_curve,
)


def _aupro_reference(maps, masks, fpr_limit):
    """Slow AUPRO: binarise the maps at every distinct score and measure FPR / mean PRO directly."""
    maps, masks = np.asarray(maps, dtype=float), np.asarray(masks).astype(bool)
    regions = []
    for i in range(len(masks)):
        labeled, n = ndimage.label(masks[i], structure=np.ones((3, 3)))
        regions += [(i, labeled == k) for k in range(1, n + 1)]
    normal = ~masks
    xs, ys = [0.0], [0.0]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        binary = maps >= t
        xs.append((binary & normal).sum() / normal.sum())
        ys.append(np.mean([binary[i][r].sum() / r.sum() for i, r in regions]))
    cx, cy = [], []
    for j, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if x <= fpr_limit:
            cx.append(x)
            cy.append(y)
        else:  # first point beyond the limit: interpolate on the segment from the previous point
            if cx[-1] < fpr_limit:
                w = (fpr_limit - xs[j - 1]) / (x - xs[j - 1])
                cx.append(fpr_limit)
                cy.append(ys[j - 1] + w * (y - ys[j - 1]))
            break
    area = sum((cx[k + 1] - cx[k]) * (cy[k + 1] + cy[k]) / 2 for k in range(len(cx) - 1))
    return area / fpr_limit


def _random_case(seed, quantize):
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 12, 12), dtype=bool)
    for img in masks[:2]:  # the third image stays fully normal
        for _ in range(3):
            r, c = rng.integers(0, 10, size=2)
            h, w = rng.integers(1, 4, size=2)
            img[r : r + h, c : c + w] = True
    masks[0, 10, 10] = masks[0, 11, 11] = True  # diagonal neighbours: one 8-connected region
    maps = rng.random(masks.shape) + 0.5 * masks
    if quantize:
        maps = np.round(maps * 6) / 6  # many ties, including between normal and defect pixels
    return maps, masks


@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
@pytest.mark.parametrize("quantize", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aupro_matches_brute_force(seed, quantize, fpr_limit):
    maps, masks = _random_case(seed, quantize)
    expected = _aupro_reference(maps, masks, fpr_limit)
    assert aupro(maps, masks, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-9)


def test_aupro_hand_computed():
    # One image; defect pixels (0,0), (1,1), (1,2) form ONE 8-connected region of area 3
    # (4-connectivity would give two regions). Normal pixels: 5.
    # Thresholds: 0.9 -> (fpr 0, pro 1/3); 0.6 -> (1/5, 1/3); 0.4 (tie: 2 defect + 1 normal) -> (2/5, 1);
    # 0.2 -> (3/5, 1); 0.1 -> (4/5, 1); 0.0 -> (1, 1).
    # fpr_limit 0.3: pro(0.3) = 1/3 + (0.1/0.2)*(2/3) = 2/3;
    #   area = 0.2*1/3 + 0.1*(1/3 + 2/3)/2 = 1/15 + 1/20 = 7/60; /0.3 -> 7/18.
    # fpr_limit 1.0: area = 1/15 + 0.2*(1/3 + 1)/2 + 0.6*1 = 1/15 + 2/15 + 9/15 = 12/15 = 0.8.
    masks = np.array([[[1, 0, 0, 0], [0, 1, 1, 0]]])
    maps = np.array([[[0.9, 0.1, 0.2, 0.4], [0.6, 0.4, 0.4, 0.0]]])
    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx(7 / 18, abs=1e-12)
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(0.8, abs=1e-12)
    fpr, pro = pro_curve(maps, masks)
    np.testing.assert_allclose(fpr, [0, 0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(pro, [0, 1 / 3, 1 / 3, 1, 1, 1, 1])


def test_pro_curve_shape_and_endpoints():
    maps, masks = _random_case(3, quantize=True)
    fpr, pro = pro_curve(maps, masks)
    assert len(fpr) == len(pro) == len(np.unique(maps)) + 1
    assert (fpr[0], pro[0]) == (0.0, 0.0)
    assert fpr[-1] == pytest.approx(1.0)
    assert pro[-1] == pytest.approx(1.0)
    assert np.all(np.diff(fpr) >= 0)
    assert np.all(np.diff(pro) >= -1e-12)


def test_aupro_perfect_inverted_and_range():
    _, masks = _random_case(4, quantize=False)
    assert aupro(masks.astype(float), masks) == pytest.approx(1.0, abs=1e-12)
    noise = np.random.default_rng(0).random(masks.shape) * 0.1
    assert aupro(-(masks + noise), masks) < 0.05
    for seed in range(5):
        maps, masks = _random_case(seed, quantize=False)
        assert 0.0 <= aupro(maps, masks) <= 1.0


@pytest.mark.parametrize("transform", [np.exp, lambda x: 3 * x + 1])
def test_aupro_invariant_to_monotone_transform(transform):
    maps, masks = _random_case(5, quantize=True)
    assert aupro(transform(maps), masks) == pytest.approx(aupro(maps, masks), abs=1e-12)


def test_image_and_pixel_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    scores, labels = rng.random(40), rng.random(40) < 0.4
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert image_ap(scores, labels) == pytest.approx(average_precision_score(labels, scores))
    maps, masks = _random_case(6, quantize=True)
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert pixel_ap(maps, masks) == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()))


def test_accepts_torch_tensors():
    maps, masks = _random_case(7, quantize=True)
    tmaps, tmasks = torch.from_numpy(maps).float(), torch.from_numpy(masks)
    assert aupro(tmaps, tmasks) == pytest.approx(aupro(maps.astype(np.float32), masks), abs=1e-12)
    assert pixel_auroc(tmaps, masks.astype(np.uint8)) == pytest.approx(pixel_auroc(maps, masks), abs=1e-6)
    assert pixel_ap(tmaps, tmasks) == pytest.approx(pixel_ap(maps, masks), abs=1e-6)
    scores, labels = torch.tensor([0.1, 0.8, 0.3, 0.9]), torch.tensor([0, 1, 0, 1])
    assert image_auroc(scores, labels) == 1.0
    assert image_ap(scores.numpy(), labels) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("metric", "scores", "labels"),
    [
        (image_auroc, np.array([0.1, 0.5, 0.9]), np.zeros(3)),
        (image_ap, np.array([0.1, 0.5, 0.9]), np.ones(3)),
        (pixel_auroc, np.random.default_rng(0).random((2, 4, 4)), np.zeros((2, 4, 4))),
        (pixel_ap, np.random.default_rng(0).random((2, 4, 4)), np.zeros((2, 4, 4))),
        (aupro, np.random.default_rng(0).random((2, 4, 4)), np.zeros((2, 4, 4))),
        (aupro, np.random.default_rng(0).random((2, 4, 4)), np.ones((2, 4, 4))),
    ],
)
def test_single_class_returns_nan_with_warning(metric, scores, labels):
    with pytest.warns(UndefinedMetricWarning, match="only one class"):
        assert math.isnan(metric(scores, labels))


def test_validation_errors():
    with pytest.raises(ValueError, match=re.escape("(3, 4, 4)") + ".*" + re.escape("(3, 4, 5)")):
        aupro(np.zeros((3, 4, 4)), np.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match=re.escape("(5,)")):
        image_auroc(np.zeros(5), np.zeros(4))
    with pytest.raises(ValueError, match="non-empty"):
        pixel_auroc(np.zeros((0, 4, 4)), np.zeros((0, 4, 4)))
    maps, masks = _random_case(0, quantize=True)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=re.escape(f"got {bad}")):
            aupro(maps, masks, fpr_limit=bad)
