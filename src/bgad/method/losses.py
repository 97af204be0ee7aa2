"""BGAD training losses (reference §3.5): maximum likelihood, explicit boundary, BG-SPP, focal weights.

All functions take the per-dimension log-likelihood ``log_prob`` (written ℓ below) of a fiber batch of feature
vectors. ``normalizer`` (ν) rescales ℓ to roughly unit magnitude so that the margin ``tau`` is easy to set.

In data-parallel training (:mod:`bgad.runtime.distributed`) ``log_prob`` is one process's chunk of the batch: every
mean is then this chunk's sum divided by the count over the whole batch (the ``count`` arguments), so that the terms
of all chunks add up to the single-process terms, and their gradients too.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import LossConfig

# The abnormal focal weight divides by |ℓ/ν|; vectors this close to ℓ = 0 get the weight of |ℓ/ν| = this.
_FOCAL_MIN_ABS = 0.01


def ml_loss(log_prob: Tensor, weights: Tensor | None = None, *, count: int | None = None) -> Tensor:
    """Soft negative log-likelihood ``mean(w * softplus(-ℓ))`` (the CFLOW/BGAD maximum-likelihood loss); with
    ``count``, the sum divided by it (a chunk's share of the mean over ``count`` vectors)."""
    loss = F.softplus(-log_prob)
    loss = loss if weights is None else weights * loss
    return loss.mean() if count is None else loss.sum() / count


def explicit_boundaries(
    normal_log_prob: Tensor, *, beta: float, normalizer: float, tau: float
) -> tuple[Tensor, Tensor]:
    """Return ``(b_n, b_a)``: the β-quantile of the normal ℓ divided by ν, and ``b_n - tau``.

    The quantile is the order statistic at 0-based index ``floor(beta * n)`` of the ascending normal ℓ, as in
    the reference. Gradients do not flow through the boundaries.
    """
    if normal_log_prob.numel() == 0:
        raise ValueError("the explicit boundary needs at least one normal vector")
    ordered = torch.sort(normal_log_prob.detach()).values
    k = min(int(beta * ordered.numel()), ordered.numel() - 1)
    b_n = ordered[k] / normalizer
    return b_n, b_n - tau


def _mean_over_active(values: Tensor, active: Tensor, count: int | None) -> Tensor:
    """Mean of ``values`` where ``active``; zero (not NaN) when nothing is active. With ``count`` (the active vectors
    of the whole batch), this chunk's share of that mean."""
    if count is None:
        return values[active].mean() if bool(active.any()) else values.new_zeros(())
    return values[active].sum() / count if count else values.new_zeros(())


def bgspp_loss(
    normal_log_prob: Tensor,
    anomaly_log_prob: Tensor,
    b_n: Tensor,
    b_a: Tensor,
    *,
    normalizer: float,
    normal_weights: Tensor | None = None,
    anomaly_weights: Tensor | None = None,
    active_counts: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Boundary-guided semi-push-pull loss ``(L_n, L_a)``.

    ``L_n`` pulls normal vectors below the normal boundary up to it; ``L_a`` pushes anomalous vectors above the
    abnormal boundary down past it. Each is a mean over its active vectors only (the reference's choice); with
    ``active_counts`` (the active normal and anomalous vectors of the whole batch), this chunk's shares of them.
    """
    s_n = normal_log_prob / normalizer
    s_a = anomaly_log_prob / normalizer
    pull = b_n - s_n
    push = s_a - b_a
    if normal_weights is not None:
        pull = normal_weights * pull
    if anomaly_weights is not None:
        push = anomaly_weights * push
    n_pull, n_push = active_counts or (None, None)
    return _mean_over_active(pull, s_n.detach() <= b_n, n_pull), _mean_over_active(push, s_a.detach() >= b_a, n_push)


def normal_focal_weights(log_prob: Tensor, *, normalizer: float) -> Tensor:
    """Up-weight hard normals: 1 for ``s = ℓ/ν > -0.2``, else ``11.7 * sqrt(1 - e^s) * |s|`` (≈ 1 at s = -0.2)."""
    s = log_prob.detach() / normalizer
    hard = 11.7 * torch.sqrt((1 - torch.exp(s)).clamp_min(0)) * s.abs()
    return torch.where(s > -0.2, torch.ones_like(s), hard)


def anomaly_focal_weights(log_prob: Tensor, *, normalizer: float) -> Tensor:
    """Up-weight hard anomalies: 1 for ``s <= -1``, else ``0.53 * (1 + e^s)^2 / |s|`` (≈ 1 at s = -1).

    The reference divides by ``|s|`` unguarded, which is infinite at ℓ = 0; here ``|s|`` is floored at 0.01.
    """
    s = log_prob.detach() / normalizer
    hard = 0.53 * (1 + torch.exp(s)).square() / s.abs().clamp_min(_FOCAL_MIN_ABS)
    return torch.where(s <= -1, torch.ones_like(s), hard)


class WholeBatch(NamedTuple):
    """The whole fiber batch, when the ``log_prob`` given to :func:`bgad_loss` is one process's chunk of it."""

    log_prob: Tensor  # (M,) ℓ of every vector of the batch, without gradients
    anomalous: Tensor  # (M,) bool


class LossTerms(NamedTuple):
    """The total loss of one fiber batch and its parts (boundaries are NaN where not computed). For a chunk of a
    batch (:class:`WholeBatch`), the loss terms are the chunk's shares and the boundaries the whole batch's."""

    total: Tensor
    ml: Tensor
    pull: Tensor
    push: Tensor
    b_n: Tensor
    b_a: Tensor


def bgad_loss(
    log_prob: Tensor, anomalous: Tensor, config: LossConfig, *, semi_push_pull: bool, whole: WholeBatch | None = None
) -> LossTerms:
    """The loss of one fiber batch (reference §3.5e).

    Phase 1 (``semi_push_pull=False``): the maximum-likelihood loss over all vectors. Phase 2: focal-weighted
    maximum likelihood over the normal vectors, plus ``λ (L_n + L_a)`` when the batch holds anomalous vectors.
    The boundary is recomputed from each fiber batch, as in the reference (its author confirms this choice).
    With ``whole``, ``log_prob`` and ``anomalous`` are one chunk of that batch: the boundary and every count come
    from the whole batch, and the terms are the chunk's shares (their sum over the chunks is the batch's loss).
    """
    nan = log_prob.new_tensor(float("nan"))
    zero = log_prob.new_zeros(())
    counts = whole is not None
    batch = whole if counts else WholeBatch(log_prob.detach(), anomalous)
    if not semi_push_pull:
        ml = ml_loss(log_prob, count=len(batch.log_prob) if counts else None)
        return LossTerms(ml, ml, zero, zero, nan, nan)
    normal, batch_normal = log_prob[~anomalous], batch.log_prob[~batch.anomalous]
    if batch_normal.numel() == 0:  # no normal vector to set a boundary with: nothing to learn from this batch
        return LossTerms(zero, zero, zero, zero, nan, nan)
    weights = normal_focal_weights(normal, normalizer=config.normalizer) if config.focal else None
    ml = ml_loss(normal, weights, count=batch_normal.numel() if counts else None)
    if not bool(batch.anomalous.any()):
        return LossTerms(ml, ml, zero, zero, nan, nan)
    b_n, b_a = explicit_boundaries(batch_normal, beta=config.beta, normalizer=config.normalizer, tau=config.tau)
    anomaly = log_prob[anomalous]
    anomaly_weights = anomaly_focal_weights(anomaly, normalizer=config.normalizer) if config.focal else None
    active = None
    if counts:
        batch_anomaly = batch.log_prob[batch.anomalous] / config.normalizer
        active = int((batch_normal / config.normalizer <= b_n).sum()), int((batch_anomaly >= b_a).sum())
    pull, push = bgspp_loss(
        normal,
        anomaly,
        b_n,
        b_a,
        normalizer=config.normalizer,
        normal_weights=weights,
        anomaly_weights=anomaly_weights,
        active_counts=active,
    )
    return LossTerms(ml + config.bgspp_lambda * (pull + push), ml, pull, push, b_n, b_a)
