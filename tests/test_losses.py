import math

import pytest
import torch

from bgad.config import LossConfig
from bgad.method.losses import (
    WholeBatch,
    anomaly_focal_weights,
    bgad_loss,
    bgspp_loss,
    explicit_boundaries,
    ml_loss,
    normal_focal_weights,
)


def test_ml_loss_is_mean_softplus_of_negative_log_prob() -> None:
    # softplus(0) = ln 2, softplus(1) = ln(1 + e), softplus(-2) = ln(1 + e^-2)
    expected = (math.log(2) + math.log(1 + math.e) + math.log(1 + math.exp(-2))) / 3
    assert float(ml_loss(torch.tensor([0.0, -1.0, 2.0]))) == pytest.approx(expected)
    weighted = ml_loss(torch.tensor([0.0, -1.0]), torch.tensor([2.0, 0.0]))
    assert float(weighted) == pytest.approx(2 * math.log(2) / 2)


def test_explicit_boundaries_take_the_beta_order_statistic() -> None:
    normal = torch.tensor([-5.0, -40.0, -10.0, -20.0, -30.0, 0.0, -1.0, -2.0])
    # sorted: -40 -30 -20 -10 -5 -2 -1 0; k = floor(0.25 * 8) = 2 -> -20; / 10 -> -2.0; minus tau 0.1 -> -2.1
    b_n, b_a = explicit_boundaries(normal, beta=0.25, normalizer=10.0, tau=0.1)
    assert float(b_n) == pytest.approx(-2.0)
    assert float(b_a) == pytest.approx(-2.1)
    b_n, _ = explicit_boundaries(normal, beta=0.0, normalizer=10.0, tau=0.1)
    assert float(b_n) == pytest.approx(-4.0)


def test_explicit_boundaries_need_normals() -> None:
    with pytest.raises(ValueError, match="at least one normal"):
        explicit_boundaries(torch.tensor([]), beta=0.01, normalizer=10, tau=0.1)


def test_bgspp_loss_hand_computed() -> None:
    normal = torch.tensor([-30.0, -10.0, 5.0])  # s = -3, -1, 0.5
    anomaly = torch.tensor([-40.0, 0.0, 10.0])  # s = -4, 0, 1
    b_n, b_a = torch.tensor(-1.0), torch.tensor(-1.1)
    pull, push = bgspp_loss(normal, anomaly, b_n, b_a, normalizer=10.0)
    # active normals: s <= -1 -> {-3, -1}: mean(b_n - s) = mean(2, 0) = 1
    assert float(pull) == pytest.approx(1.0)
    # active anomalies: s >= -1.1 -> {0, 1}: mean(s - b_a) = mean(1.1, 2.1) = 1.6
    assert float(push) == pytest.approx(1.6)


def test_bgspp_loss_is_zero_not_nan_when_nothing_is_active() -> None:
    b_n, b_a = torch.tensor(-1.0), torch.tensor(-1.1)
    pull, push = bgspp_loss(torch.tensor([5.0]), torch.tensor([-50.0]), b_n, b_a, normalizer=10)
    assert float(pull) == 0.0
    assert float(push) == 0.0


def test_bgspp_gradients_pull_normals_up_and_push_anomalies_down() -> None:
    normal = torch.tensor([-30.0, 5.0], requires_grad=True)
    anomaly = torch.tensor([0.0, -50.0], requires_grad=True)
    pull, push = bgspp_loss(normal, anomaly, torch.tensor(-1.0), torch.tensor(-1.1), normalizer=10.0)
    (pull + push).backward()
    assert normal.grad[0] < 0
    assert normal.grad[1] == 0
    assert anomaly.grad[0] > 0
    assert anomaly.grad[1] == 0


@pytest.mark.parametrize(("log_prob", "expected"), [(-5.0, 3.67), (-10.0, 9.30), (-20.0, 21.76), (-1.0, 1.0)])
def test_normal_focal_weights_match_reference_values(log_prob: float, expected: float) -> None:
    weight = normal_focal_weights(torch.tensor([log_prob]), normalizer=10.0)
    assert float(weight) == pytest.approx(expected, abs=0.01)


@pytest.mark.parametrize(("log_prob", "expected"), [(-5.0, 2.74), (-1.0, 19.23), (-9.0, 1.165), (-10.0, 1.0)])
def test_anomaly_focal_weights_match_reference_values(log_prob: float, expected: float) -> None:
    weight = anomaly_focal_weights(torch.tensor([log_prob]), normalizer=10.0)
    assert float(weight) == pytest.approx(expected, abs=0.01)


def test_anomaly_focal_weight_is_finite_at_zero_log_likelihood() -> None:
    weights = anomaly_focal_weights(torch.tensor([0.0, 1e-9, -1e-9]), normalizer=10.0)
    assert torch.isfinite(weights).all()
    # |s| is floored at 0.01: 0.53 * (1 + e^0)^2 / 0.01 = 212
    assert float(weights[0]) == pytest.approx(212.0)


def test_bgad_loss_phase_one_is_plain_maximum_likelihood() -> None:
    log_prob = torch.tensor([-3.0, -1.0, 2.0])
    anomalous = torch.tensor([False, True, False])
    terms = bgad_loss(log_prob, anomalous, LossConfig(), semi_push_pull=False)
    assert float(terms.total) == pytest.approx(float(ml_loss(log_prob)))
    assert math.isnan(float(terms.b_n))


def test_bgad_loss_phase_two_hand_computed() -> None:
    # ν = 10, β = 0.25, τ = 0.1, λ = 0.5, no focal weights. Normals ℓ = -30, -10, 5, 20 (s = -3, -1, 0.5, 2):
    # b_n = the order statistic at floor(0.25 * 4) = 1, i.e. ℓ = -10 -> b_n = -1, b_a = -1.1.
    log_prob = torch.tensor([-30.0, -10.0, 5.0, 20.0, -40.0, 0.0, 10.0])
    anomalous = torch.tensor([False, False, False, False, True, True, True])
    config = LossConfig(beta=0.25, tau=0.1, normalizer=10.0, bgspp_lambda=0.5, focal=False)
    terms = bgad_loss(log_prob, anomalous, config, semi_push_pull=True)
    ml = sum(math.log1p(math.exp(-v)) for v in (-30.0, -10.0, 5.0, 20.0)) / 4  # softplus(-ℓ) over the normals
    pull = ((-1.0 - -3.0) + (-1.0 - -1.0)) / 2  # normals with s <= b_n: s = -3, -1
    push = ((0.0 - -1.1) + (1.0 - -1.1)) / 2  # anomalies with s >= b_a: s = 0, 1 (s = -4 is past it)
    assert float(terms.b_n) == pytest.approx(-1.0)
    assert float(terms.b_a) == pytest.approx(-1.1)
    assert float(terms.pull) == pytest.approx(pull)
    assert float(terms.push) == pytest.approx(push)
    assert float(terms.total) == pytest.approx(ml + 0.5 * (pull + push))


def test_bgad_loss_without_anomalies_in_the_batch_has_no_bgspp_term() -> None:
    log_prob = torch.tensor([-30.0, -1.0, 2.0])
    terms = bgad_loss(log_prob, torch.zeros(3, dtype=torch.bool), LossConfig(focal=False), semi_push_pull=True)
    assert float(terms.total) == pytest.approx(float(ml_loss(log_prob)))
    assert float(terms.pull) == 0.0


def test_bgad_loss_with_only_anomalies_is_skipped() -> None:
    log_prob = torch.tensor([-3.0, -1.0], requires_grad=True)
    terms = bgad_loss(log_prob, torch.ones(2, dtype=torch.bool), LossConfig(), semi_push_pull=True)
    assert not terms.total.requires_grad


@pytest.mark.parametrize("semi_push_pull", [False, True])
@pytest.mark.parametrize("cut", [0, 3, 50])
def test_the_shares_of_a_split_batch_add_up_to_its_loss_and_gradient(semi_push_pull: bool, cut: int) -> None:
    """Data-parallel training: chunks scored against the whole batch (WholeBatch) give the batch's loss terms and
    gradient when summed; a chunk may hold no normal or no anomalous vector at all (cut 3: all anomalous)."""
    generator = torch.Generator().manual_seed(0)
    log_prob = (10 * torch.randn(100, generator=generator, dtype=torch.float64)).requires_grad_()
    anomalous = torch.zeros(100, dtype=torch.bool)
    anomalous[:3] = anomalous[60:70] = True
    config = LossConfig(beta=0.1)
    whole = bgad_loss(log_prob, anomalous, config, semi_push_pull=semi_push_pull)
    (expected,) = torch.autograd.grad(whole.total, log_prob)
    batch = WholeBatch(log_prob.detach(), anomalous)
    shares = [
        bgad_loss(log_prob[part], anomalous[part], config, semi_push_pull=semi_push_pull, whole=batch)
        for part in (slice(0, cut), slice(cut, 100))
    ]
    for name in ("total", "ml", "pull", "push"):
        summed = sum(getattr(share, name).detach() for share in shares)
        assert float(summed) == pytest.approx(float(getattr(whole, name).detach()), rel=1e-12)
    assert all(torch.equal(s.b_n, whole.b_n) or whole.b_n.isnan() for s in shares)
    (got,) = torch.autograd.grad(sum(s.total for s in shares), log_prob)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)
    if semi_push_pull:
        assert float(whole.pull.detach()) > 0  # both BG-SPP terms were active
        assert float(whole.push.detach()) > 0
