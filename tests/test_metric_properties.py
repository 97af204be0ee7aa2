"""Property-based (hypothesis) tests for bgad.metrics.

Scores are mostly drawn from a few levels so that ties (also between the two classes) are common.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.stats import rankdata
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
from tests.test_metrics import _aupro_reference

FAST = settings(max_examples=60, deadline=None)

# Strictly increasing transforms. They are applied to scores that are multiples of 1/8 in [-50, 50]
# (see `_scores`), where exp and the affine map stay strictly increasing in floating point too.
INCREASING = {
    "exp": np.exp,
    "affine": lambda x: 2.0 * x + 3.0,
    "cube": lambda x: x**3,
    "dense_rank": lambda x: rankdata(x, method="dense").reshape(np.shape(x)).astype(float),
    "average_rank": lambda x: rankdata(x, method="average").reshape(np.shape(x)),
}
transforms = st.sampled_from(sorted(INCREASING))
fpr_limits = st.floats(min_value=0.0, max_value=1.0, exclude_min=True)


def _scores(shape):
    """Float scores: k/8 for integer k in [-m, m], with m small (many ties) or large (few ties)."""
    return st.sampled_from([1, 2, 4, 400]).flatmap(
        lambda m: hnp.arrays(np.int64, shape, elements=st.integers(-m, m)).map(lambda a: a / 8.0)
    )


def _bool_arrays(shape):
    """Booleans that are mostly False, mostly True or mixed."""
    return st.one_of(
        hnp.arrays(bool, shape, elements=st.booleans()),
        hnp.arrays(bool, shape, elements=st.just(True), fill=st.just(False)),
        hnp.arrays(bool, shape, elements=st.just(False), fill=st.just(True)),
    )


@st.composite
def _two_class(draw, labels):
    """Force at least one True and one False entry into ``labels`` (size >= 2)."""
    labels = labels.copy()
    i, j = draw(st.lists(st.integers(0, labels.size - 1), min_size=2, max_size=2, unique=True))
    labels.flat[i], labels.flat[j] = True, False
    return labels


@st.composite
def image_cases(draw, two_class=True):
    n = draw(st.integers(2, 40))
    scores = draw(_scores(n))
    labels = draw(_bool_arrays(n))
    return scores, draw(_two_class(labels)) if two_class else labels


@st.composite
def pixel_cases(draw, two_class=True, max_n=3, max_hw=6):
    shape = (draw(st.integers(1, max_n)), draw(st.integers(1, max_hw)), draw(st.integers(1, max_hw)))
    if two_class and math.prod(shape) < 2:
        shape = (shape[0], shape[1], 2)
    maps = draw(_scores(shape))
    masks = draw(_bool_arrays(shape))
    return maps, draw(_two_class(masks)) if two_class else masks


def _one_class(labels, value):
    return np.full(labels.shape, value, dtype=bool)


# --- image / pixel AUROC and AP ----------------------------------------------------------------------


@FAST
@given(case=image_cases())
def test_image_metrics_match_sklearn(case):
    scores, labels = case
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert image_ap(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


@FAST
@given(case=pixel_cases(max_n=4, max_hw=8))
def test_pixel_metrics_match_sklearn(case):
    maps, masks = case
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert pixel_ap(maps, masks) == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12)


@FAST
@given(case=image_cases(two_class=False), value=st.booleans(), metric=st.sampled_from([image_auroc, image_ap]))
def test_image_metrics_one_class_nan(case, value, metric):
    scores, labels = case
    with pytest.warns(UndefinedMetricWarning, match="only one class"):
        assert math.isnan(metric(scores, _one_class(labels, value)))


@FAST
@given(case=pixel_cases(two_class=False), value=st.booleans(), metric=st.sampled_from([pixel_auroc, pixel_ap, aupro]))
def test_pixel_metrics_one_class_nan(case, value, metric):
    maps, masks = case
    with pytest.warns(UndefinedMetricWarning, match="only one class"):
        assert math.isnan(metric(maps, _one_class(masks, value)))


@FAST
@given(case=image_cases(), name=transforms)
def test_auroc_invariant_to_increasing_transform(case, name):
    scores, labels = case
    transformed = INCREASING[name](scores)
    assert np.all(np.sign(np.diff(transformed[np.argsort(scores)])) == np.sign(np.diff(np.sort(scores))))
    assert image_auroc(transformed, labels) == pytest.approx(image_auroc(scores, labels), abs=1e-12)
    assert image_ap(transformed, labels) == pytest.approx(image_ap(scores, labels), abs=1e-12)


@FAST
@given(case=pixel_cases(), name=transforms)
def test_pixel_auroc_invariant_to_increasing_transform(case, name):
    maps, masks = case
    assert pixel_auroc(INCREASING[name](maps), masks) == pytest.approx(pixel_auroc(maps, masks), abs=1e-12)


@FAST
@given(case=image_cases())
def test_auroc_negation_gives_complement(case):
    scores, labels = case
    flipped = image_auroc(-scores, labels)
    assert flipped == pytest.approx(roc_auc_score(labels, -scores), abs=1e-12)
    assert flipped == pytest.approx(1.0 - image_auroc(scores, labels), abs=1e-12)


@FAST
@given(case=pixel_cases())
def test_pixel_auroc_negation_gives_complement(case):
    maps, masks = case
    assert pixel_auroc(-maps, masks) == pytest.approx(1.0 - pixel_auroc(maps, masks), abs=1e-12)


# --- AUPRO / PRO curve --------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(case=pixel_cases(max_n=4, max_hw=8), fpr_limit=fpr_limits)
def test_aupro_in_unit_interval(case, fpr_limit):
    maps, masks = case
    value = aupro(maps, masks, fpr_limit=fpr_limit)
    assert 0.0 <= value <= 1.0


@settings(max_examples=100, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(2, 6)),
    data=st.data(),
    fpr_limit=fpr_limits,
)
def test_aupro_in_unit_interval_arbitrary_floats(shape, data, fpr_limit):
    maps = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(allow_nan=False, allow_infinity=False)))
    masks = data.draw(_bool_arrays(shape).flatmap(_two_class))
    value = aupro(maps, masks, fpr_limit=fpr_limit)
    assert 0.0 <= value <= 1.0


@FAST
@given(case=pixel_cases(), fpr_limit=fpr_limits, name=transforms)
def test_aupro_invariant_to_increasing_transform(case, fpr_limit, name):
    maps, masks = case
    expected = aupro(maps, masks, fpr_limit=fpr_limit)
    assert aupro(INCREASING[name](maps), masks, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(case=pixel_cases(), fpr_limit=st.one_of(fpr_limits, st.sampled_from([1.0, 0.3, 0.05])))
def test_aupro_matches_brute_force_reference(case, fpr_limit):
    maps, masks = case
    expected = _aupro_reference(maps, masks, fpr_limit)
    assert aupro(maps, masks, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-9)


@FAST
@given(case=pixel_cases(), fpr_limit=fpr_limits, noise=st.booleans())
def test_aupro_perfect_maps_give_one(case, fpr_limit, noise):
    other, masks = case
    maps = masks.astype(float)
    if noise:  # any map that ranks every defect pixel above every normal pixel is perfect
        maps = 2 * maps + (other - other.min()) / (np.ptp(other) + 1)
    assert aupro(maps, masks, fpr_limit=fpr_limit) == pytest.approx(1.0, abs=1e-12)


@FAST
@given(case=pixel_cases(max_n=4, max_hw=8))
def test_pro_curve_monotone_with_endpoints(case):
    maps, masks = case
    fpr, pro = pro_curve(maps, masks)
    assert len(fpr) == len(pro) == len(np.unique(maps)) + 1
    assert (fpr[0], pro[0]) == (0.0, 0.0)
    assert np.all(np.diff(fpr) >= 0)
    assert np.all(np.diff(pro) >= 0)
    assert fpr[-1] == 1.0
    assert pro[-1] == pytest.approx(1.0, abs=1e-12)
    assert np.all((fpr >= 0) & (fpr <= 1) & (pro >= 0) & (pro <= 1))


@FAST
@given(case=pixel_cases(max_n=4), fpr_limit=fpr_limits, data=st.data())
def test_aupro_invariant_to_image_order(case, fpr_limit, data):
    maps, masks = case
    perm = np.array(data.draw(st.permutations(range(len(maps)))), dtype=int)
    expected = aupro(maps, masks, fpr_limit=fpr_limit)
    assert aupro(maps[perm], masks[perm], fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-12)
    fpr, pro = pro_curve(maps, masks)
    fpr_p, pro_p = pro_curve(maps[perm], masks[perm])
    np.testing.assert_allclose(fpr_p, fpr, atol=1e-12)
    np.testing.assert_allclose(pro_p, pro, atol=1e-12)
