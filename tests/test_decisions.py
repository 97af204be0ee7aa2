"""Decisions at thresholds: the metrics of verdicts and masks, the thresholds a user asks for, and the pixel
threshold chosen for mask quality."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import confusion_matrix, f1_score, jaccard_score, precision_recall_fscore_support

from bgad.data.samples import Sample
from bgad.errors import BGADError
from bgad.evaluation import Evaluation
from bgad.method.thresholds import Thresholds, normalized_score, override_thresholds, threshold_for_fpr
from bgad.metrics import decision_metrics, f1_max, mask_overlaps


def test_decision_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    truth, pred = rng.random(500) < 0.3, rng.random(500) < 0.4
    got = decision_metrics(pred, truth)
    tn, fp, fn, tp = confusion_matrix(truth, pred).ravel()
    precision, recall, f1, _ = precision_recall_fscore_support(truth, pred, average="binary")
    assert (got["tp"], got["fp"], got["tn"], got["fn"]) == (tp, fp, tn, fn)
    assert got["precision"] == pytest.approx(precision)
    assert got["recall"] == pytest.approx(recall)
    assert got["f1"] == pytest.approx(f1)
    assert got["fpr"] == pytest.approx(fp / (fp + tn))
    assert np.isnan(decision_metrics([False, False], [False, False])["precision"])  # nothing flagged: undefined


def test_mask_overlaps_match_sklearn_per_image_and_count_empty_as_perfect() -> None:
    rng = np.random.default_rng(1)
    pred, truth = rng.random((3, 8, 8)) < 0.3, rng.random((3, 8, 8)) < 0.3
    pred[2], truth[2] = False, False  # a good image judged good
    iou, f1 = mask_overlaps(pred, truth)
    for i in range(2):
        assert iou[i] == pytest.approx(jaccard_score(truth[i].ravel(), pred[i].ravel()))
        assert f1[i] == pytest.approx(f1_score(truth[i].ravel(), pred[i].ravel()))
    assert (iou[2], f1[2]) == (1.0, 1.0)
    truth[2, 0, 0] = True  # a defect that was missed entirely
    assert mask_overlaps(pred, truth)[1][2] == 0.0


@given(st.lists(st.floats(-5, 5), min_size=2, max_size=30), st.data())
def test_f1_max_is_the_best_over_all_thresholds(scores: list[float], data: st.DataObject) -> None:
    labels = np.array(data.draw(st.lists(st.booleans(), min_size=len(scores), max_size=len(scores))))
    if labels.all() or not labels.any():
        return
    values = np.array(scores)
    brute = max(f1_score(labels, values >= t) for t in values)
    assert f1_max(values, labels) == pytest.approx(brute)


def test_normalized_score_gives_the_verdict_at_one_half() -> None:
    normals = np.random.default_rng(3).gamma(4.0, size=120)
    threshold = threshold_for_fpr(normals, 0.01)
    scores = np.linspace(0, 40, 400)
    normalized = normalized_score(scores, threshold, normals)
    assert (np.diff(normalized) >= 0).all()
    assert ((normalized > 0.5) == (scores > threshold)).all()  # the same verdict
    assert normalized_score(threshold, threshold, normals) == pytest.approx(0.5)
    assert normalized_score(normals.min() - 1, normals.min() - 2, normals) == 1.0  # below every normal: verdict


@given(st.lists(st.floats(0, 100), min_size=2, max_size=200), st.floats(0.001, 0.5), st.floats(0.001, 0.5))
def test_a_lower_target_rate_never_lowers_the_threshold(scores: list[float], a: float, b: float) -> None:
    values = np.array(scores)
    low, high = sorted((a, b))
    assert threshold_for_fpr(values, low) >= threshold_for_fpr(values, high) - 1e-9


def test_override_thresholds() -> None:
    base, normals = Thresholds(2.0, 1.0), np.arange(100.0)
    assert override_thresholds(base, normals) == base
    assert override_thresholds(base, normals, image=5.0) == Thresholds(5.0, 1.0)
    assert override_thresholds(base, normals, pixel=0.5) == Thresholds(2.0, 0.5)
    assert override_thresholds(base, normals, target_fpr=0.05).image == threshold_for_fpr(normals, 0.05)
    with pytest.raises(BGADError, match="not both"):
        override_thresholds(base, normals, image=1.0, target_fpr=0.1)
    with pytest.raises(BGADError, match="bgad calibrate"):
        override_thresholds(base, None, target_fpr=0.1)
    with pytest.raises(BGADError, match="finite"):
        override_thresholds(base, normals, pixel=float("nan"))


def test_evaluation_decisions_follow_the_verdict(tmp_path: Path) -> None:
    size = 8
    maps = np.zeros((3, size, size), np.float32)
    masks = np.zeros((3, size, size), bool)
    maps[0, 1, 1] = 0.9  # a good image with a hot pixel, below the image threshold
    maps[1, 2:4, 2:4], masks[1, 2:4, 2:4] = 2.0, True  # a defect, found exactly
    maps[2, 5, 5], masks[2, 5:7, 5:7] = 1.5, True  # a defect, a quarter of it found
    samples = (
        Sample(tmp_path / "g.png"),
        Sample(tmp_path / "a.png", "crack", tmp_path / "a_mask.png"),
        Sample(tmp_path / "b.png", "crack", tmp_path / "b_mask.png"),
    )
    evaluation = Evaluation(samples, maps.max(axis=(1, 2)), maps, masks)
    decided = evaluation.decisions(Thresholds(image=1.0, pixel=0.5))
    assert decided["good_images_with_masks"] == 0  # 0.9 > pixel 0.5, but the image is judged good
    assert (decided["image"]["tp"], decided["image"]["fp"]) == (2, 0)
    assert (decided["pixel"]["tp"], decided["pixel"]["fp"], decided["pixel"]["fn"]) == (5, 0, 3)
    assert decided["mask_iou"] == pytest.approx((1 + 1 + 0.25) / 3)
    assert decided["mask_f1"] == pytest.approx((1 + 1 + 0.4) / 3)
    every = evaluation.decisions(Thresholds(image=0.5, pixel=0.5))  # now the good image is flagged, with a mask
    assert every["good_images_with_masks"] == 1
