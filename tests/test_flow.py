"""Tests for the conditional normalizing flow (``bgad.method.flow``) and its positional condition (``encoding``).

Float64 checks that need exact invertibility or an exact Jacobian first replace every block's rotation by
its nearest exactly-orthogonal float64 matrix (see :func:`_to_exact_double`): the buffer is drawn in float64
but stored in float32, so after ``.double()`` it is orthogonal only to ~1e-7, and ``R.T`` is then its inverse
and ``log|det R| == 0`` only to that accuracy. FrEIA's ``AllInOneBlock`` stores ``w_perm``/``w_perm_inv`` in
float32 in the same way, so this is not a discrepancy with the reference.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bgad.method.encoding import GridEncoding, positional_encoding_2d
from bgad.method.flow import ConditionalFlow

COND_DIM = 128


def _to_exact_double(flow: ConditionalFlow) -> ConditionalFlow:
    """Convert to float64 and replace each rotation by its polar factor (exactly orthogonal, ~1e-7 away)."""
    flow = flow.double()
    for block in flow.blocks:
        u, _, vh = torch.linalg.svd(block.rotation)
        block.rotation.copy_(u @ vh)
    return flow


def _exact_flow(channels: int, seed: int, *, perturbed: bool) -> ConditionalFlow:
    """A float64 flow with exactly orthogonal rotations, optionally moved away from its init (seed + 1)."""
    flow = _to_exact_double(ConditionalFlow(channels, seed=seed))
    return _perturb(flow, seed=seed + 1) if perturbed else flow


def _perturb(flow: ConditionalFlow, seed: int) -> ConditionalFlow:
    """Move every trainable parameter away from its init so that all terms of the log-det are non-trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in flow.blocks:
            for layer in (block.subnet[0], block.subnet[2]):
                layer.weight.normal_(0.0, 1.5 / math.sqrt(layer.in_features), generator=gen)
                layer.bias.normal_(0.0, 0.1, generator=gen)
            # larger log-scale outputs (first half) so that the alpha * tanh clamp is visibly non-linear, and
            # smaller shifts (second half) so that values stay moderate through the 8 blocks
            half = block.subnet[2].out_features // 2
            block.subnet[2].weight[:half] *= 1.5
            block.subnet[2].weight[half:] *= 0.3
            # softplus_{0.5}(g) * 0.1 ranges over ~[0.9, 1.1] for g in [9, 11]: a different scale per channel.
            block.global_scale.uniform_(9.0, 11.0, generator=gen)
            block.global_offset.normal_(0.0, 0.2, generator=gen)
    return flow


def _condition_table(n_rows: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return positional_encoding_2d(COND_DIM, 4, n_rows // 4).to(dtype)


# ----------------------------------------------------------------------------------------------------------
# 1. Positional encoding
# ----------------------------------------------------------------------------------------------------------


def _reference_encoding(d: int, h: int, w: int) -> torch.Tensor:
    """CFLOW-AD ``positionalencoding2d(D, H, W)`` written out element by element: returns (D, H, W)."""
    half = d // 2
    out = torch.empty(d, h, w, dtype=torch.float64)
    for k in range(0, half, 2):
        div = math.exp(k * -(math.log(10000.0) / half))
        for y in range(h):
            for x in range(w):
                out[k, y, x] = math.sin(x * div)
                out[k + 1, y, x] = math.cos(x * div)
                out[half + k, y, x] = math.sin(y * div)
                out[half + k + 1, y, x] = math.cos(y * div)
    return out


@pytest.mark.parametrize(("channels", "height", "width"), [(32, 5, 7), (8, 9, 3), (128, 3, 4)])
def test_encoding_matches_reference_formula(channels, height, width):
    enc = positional_encoding_2d(channels, height, width)
    assert enc.shape == (height * width, channels)
    assert enc.dtype == torch.float32
    ref = _reference_encoding(channels, height, width)
    torch.testing.assert_close(enc.double(), ref.reshape(channels, height * width).T, rtol=0, atol=1e-6)
    # rows are in (y, x) order
    torch.testing.assert_close(enc[2 * width + 1].double(), ref[:, 2, 1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("channels", [2, 6, 10, 130])
def test_encoding_rejects_channels_not_multiple_of_4(channels):
    with pytest.raises(ValueError, match="multiple of 4"):
        positional_encoding_2d(channels, 4, 4)


# ----------------------------------------------------------------------------------------------------------
# 2.-5. Invertibility, log-det, log-prob, gathered condition
# ----------------------------------------------------------------------------------------------------------


# Every way the flow can be given its condition: a (P, D) table with a row index per vector (training on cached
# vectors), the table's rows already gathered, the separable grid with an index (what training uses), and the grid
# for every position of whole images (inference).
PATHS = ("table+index", "table rows", "grid+index", "grid, all positions")
GRID_SHAPE = (4, 5)


def _path(path: str, n: int, seed: int) -> tuple[object, torch.Tensor | None, torch.Tensor]:
    """(condition, index) for one path and the table rows ``rows`` (N,) they stand for. "grid, all positions"
    takes every position in order, so N = h * w there."""
    grid = GridEncoding(*(t.double() for t in GridEncoding.create(COND_DIM, *GRID_SHAPE)))
    table = grid.table()
    positions = len(table)
    rows = (
        torch.arange(positions)
        if path == "grid, all positions"
        else torch.randint(0, positions, (n,), generator=torch.Generator().manual_seed(seed))
    )
    condition, index = {
        "table+index": (table, rows),
        "table rows": (table[rows], None),
        "grid+index": (grid, rows),
        "grid, all positions": (grid, None),
    }[path]
    return condition, index, rows


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("channels", [5, 24])
@pytest.mark.parametrize("perturbed", [False, True])
def test_inverse_is_exact(path, channels, perturbed):
    flow = _exact_flow(channels, 1, perturbed=perturbed)
    condition, index, rows = _path(path, 64, seed=3)
    x = 2.0 * torch.randn(len(rows), channels, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        z, _ = flow(x, condition, index)
        x_rec = flow.inverse(z, condition, index)
        assert not torch.allclose(z, x)
        torch.testing.assert_close(x_rec, x, rtol=0, atol=1e-10)
        # and the other way round
        z_rec, _ = flow(flow.inverse(x, condition, index), condition, index)
        torch.testing.assert_close(z_rec, x, rtol=0, atol=1e-10)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("channels", [3, 6])
@pytest.mark.parametrize("perturbed", [False, True])
def test_log_det_matches_autograd_jacobian(path, channels, perturbed):
    flow = _exact_flow(channels, 4, perturbed=perturbed)
    condition, index, rows = _path(path, 5, seed=5)
    x = 1.5 * torch.randn(len(rows), channels, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with torch.no_grad():
        _, log_det = flow(x, condition, index)
    # Vectors do not interact: the Jacobian of the batch is block diagonal, one (C, C) block per vector.
    jacobian = torch.autograd.functional.jacobian(lambda v: flow(v, condition, index)[0], x)
    blocks = torch.stack([jacobian[i, :, i, :] for i in range(len(rows))])
    sign, expected = torch.linalg.slogdet(blocks)
    assert (sign == 1.0).all()  # the flow is orientation preserving (positive scales, rotations in SO(C))
    torch.testing.assert_close(log_det, expected, rtol=0, atol=1e-10)
    if perturbed:  # the check is non-trivial: log-dets differ between vectors and are far from 0
        assert expected.std() > 1e-2
        assert expected.abs().min() > 1e-2


@pytest.mark.parametrize("channels", [5, 24])
def test_log_prob_is_change_of_variables(channels):
    flow = _perturb(ConditionalFlow(channels, seed=7).double(), seed=8)
    gen = torch.Generator().manual_seed(9)
    table = _condition_table(12)
    index = torch.randint(0, 12, (32,), generator=gen)
    x = torch.randn(32, channels, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        z, log_det = flow(x, table, index)
        log_prob = flow.log_prob(x, table, index)
    expected = (-channels / 2 * math.log(2 * math.pi) - 0.5 * (z * z).sum(dim=1) + log_det) / channels
    torch.testing.assert_close(log_prob, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gathered_condition_equals_per_vector_table(dtype):
    flow = _perturb(ConditionalFlow(10, seed=10).to(dtype), seed=11)
    gen = torch.Generator().manual_seed(12)
    table = _condition_table(16, dtype)
    index = torch.randint(0, 16, (50,), generator=gen)
    x = torch.randn(50, 10, generator=gen, dtype=dtype)
    with torch.no_grad():
        z_gather, ld_gather = flow(x, table, index)
        z_full, ld_full = flow(x, table[index], None)
        lp_gather, lp_full = flow.log_prob(x, table, index), flow.log_prob(x, table[index])
        inv_gather, inv_full = flow.inverse(z_gather, table, index), flow.inverse(z_gather, table[index])
    # W_c c is row-wise, so gathering before or after it is the same value per row; but the matmuls have other
    # shapes, which a BLAS may sum in another order (2e-15 apart in float64 on some CPUs): equal up to rounding.
    atol = 1e-12 if dtype == torch.float64 else 1e-5
    for gathered, full in ((z_gather, z_full), (ld_gather, ld_full), (lp_gather, lp_full), (inv_gather, inv_full)):
        torch.testing.assert_close(gathered, full, rtol=0, atol=atol)


# ----------------------------------------------------------------------------------------------------------
# 6. Parity with FrEIA's AllInOneBlock as configured by the BGAD reference code
# ----------------------------------------------------------------------------------------------------------


def _freia_flow(channels: int, n_blocks: int = 8):
    freia_framework = pytest.importorskip("FrEIA.framework")
    freia_modules = pytest.importorskip("FrEIA.modules")

    def subnet(dims_in, dims_out):
        return nn.Sequential(nn.Linear(dims_in, 2 * dims_in), nn.ReLU(), nn.Linear(2 * dims_in, dims_out))

    inn = freia_framework.SequenceINN(channels)
    for _ in range(n_blocks):
        inn.append(
            freia_modules.AllInOneBlock,
            cond=0,
            cond_shape=(COND_DIM,),
            subnet_constructor=subnet,
            affine_clamping=1.9,
            global_affine_type="SOFTPLUS",
            permute_soft=True,
        )
    return inn


def _copy_into_freia(flow: ConditionalFlow, inn) -> None:
    channels = flow.channels
    with torch.no_grad():
        for ours, theirs in zip(flow.blocks, inn.module_list, strict=True):
            theirs.subnet.load_state_dict(ours.subnet.state_dict())  # same layer shapes, strict
            theirs.global_scale.copy_(ours.global_scale.view(1, channels))
            theirs.global_offset.copy_(ours.global_offset.view(1, channels))
            # FrEIA: y = F.linear(v, w_perm) = v @ w_perm.T and the inverse uses w_perm_inv = w_perm.T
            theirs.w_perm.copy_(ours.rotation)
            theirs.w_perm_inv.copy_(ours.rotation.T)


@pytest.mark.parametrize("channels", [24, 7])
def test_init_matches_freia(channels):
    """Same split, subnet shapes, global scale init (identity) and offset init as FrEIA's block."""
    inn = _freia_flow(channels)
    flow = ConditionalFlow(channels, seed=13)
    for ours, theirs in zip(flow.blocks, inn.module_list, strict=True):
        assert ours.split == theirs.splits[0]
        for name, tensor in theirs.subnet.state_dict().items():
            assert ours.subnet.state_dict()[name].shape == tensor.shape
        torch.testing.assert_close(ours.global_scale[None], theirs.global_scale, rtol=1e-6, atol=0)
        torch.testing.assert_close(ours.global_offset[None], theirs.global_offset, rtol=0, atol=0)
        torch.testing.assert_close(ours._scale(), torch.ones(channels), rtol=1e-6, atol=0)
        assert theirs.clamp == ours.clamp_alpha


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("channels", [24, 7])
@pytest.mark.parametrize("perturbed", [False, True])
def test_parity_with_freia_all_in_one_block(path, channels, perturbed):
    """z and log|det J| equal FrEIA's, forward and reverse, after copying our parameters into FrEIA's blocks.

    FrEIA's in-place ``a *= 0.1`` acts on a fresh subnet output, so it is the same as our ``0.1 * subnet(.)``.
    FrEIA's reverse pass returns the log-det of the inverse map, i.e. minus ours at the reconstructed input;
    that identity needs an exactly orthogonal rotation (see the module docstring), which both sides share.
    """
    flow = _exact_flow(channels, 14, perturbed=perturbed)
    inn = _freia_flow(channels).double()
    _copy_into_freia(flow, inn)
    condition, index, rows = _path(path, 40, seed=15)
    per_vector = GridEncoding(*(t.double() for t in GridEncoding.create(COND_DIM, *GRID_SHAPE))).table()[rows]
    x = 1.5 * torch.randn(len(rows), channels, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    with torch.no_grad():
        z, log_det = flow(x, condition, index)
        z_ref, log_det_ref = inn(x, c=[per_vector])
        torch.testing.assert_close(z, z_ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(log_det, log_det_ref, rtol=0, atol=1e-12)

        x_back = flow.inverse(z, condition, index)
        x_back_ref, log_det_rev_ref = inn(z, c=[per_vector], rev=True)
        torch.testing.assert_close(x_back, x_back_ref, rtol=0, atol=1e-12)
        _, log_det_at_back = flow(x_back, condition, index)
        torch.testing.assert_close(-log_det_at_back, log_det_rev_ref, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# 7.-9. Rotations, seeding, gradients, likelihood at init
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [2, 7, 24])
def test_rotation_is_special_orthogonal(channels):
    flow = ConditionalFlow(channels, seed=17)
    eye = torch.eye(channels, dtype=torch.float64)
    for block in flow.blocks:
        rot = block.rotation.double()
        assert block.rotation.dtype == torch.float32
        torch.testing.assert_close(rot @ rot.T, eye, rtol=0, atol=1e-6)
        torch.testing.assert_close(torch.linalg.det(rot), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-5)
    if channels > 2:  # rotations differ between blocks
        assert not torch.equal(flow.blocks[0].rotation, flow.blocks[1].rotation)


def test_seed_determines_weights_and_rotations():
    a, b, c = ConditionalFlow(9, seed=3), ConditionalFlow(9, seed=3), ConditionalFlow(9, seed=4)
    state_a, state_b, state_c = a.state_dict(), b.state_dict(), c.state_dict()
    assert state_a.keys() == state_b.keys() == state_c.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name
    for name in state_a:
        if "rotation" in name or name.endswith(("subnet.0.weight", "subnet.2.weight")):
            assert not torch.equal(state_a[name], state_c[name]), name


def test_gradients_reach_every_parameter_and_rotation_is_a_buffer():
    flow = ConditionalFlow(6, seed=18)
    gen = torch.Generator().manual_seed(19)
    table = _condition_table(8, torch.float32)
    index = torch.randint(0, 8, (32,), generator=gen)
    x = torch.randn(32, 6, generator=gen)
    loss = -flow.log_prob(x, table, index).mean()
    loss.backward()
    params = dict(flow.named_parameters())
    assert len(params) == 8 * 6  # 2 linear layers x (weight, bias) + global scale/offset, per block
    for name, param in params.items():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    buffers = dict(flow.named_buffers())
    assert set(buffers) == {f"blocks.{i}.rotation" for i in range(8)}
    param_ids = {id(p) for p in flow.parameters()}
    assert all(id(buf) not in param_ids and not buf.requires_grad for buf in buffers.values())


def test_log_likelihood_of_standard_normal_at_init():
    """At init the flow is close to a rotation, so N(0, I) inputs score ~ -log(2 pi)/2 - 1/2 = -1.419 per dim.

    (The BGAD reference reports about -1.43 at the start of training.)
    """
    channels = 64
    flow = ConditionalFlow(channels, seed=20)
    gen = torch.Generator().manual_seed(21)
    table = positional_encoding_2d(COND_DIM, 16, 16)
    index = torch.randint(0, 256, (4096,), generator=gen)
    x = torch.randn(4096, channels, generator=gen)
    with torch.no_grad():
        mean_log_prob = flow.log_prob(x, table, index).mean().item()
    assert mean_log_prob == pytest.approx(-0.5 * math.log(2 * math.pi) - 0.5, abs=0.05)
    assert mean_log_prob == pytest.approx(-1.43, abs=0.06)


def test_whole_images_share_one_condition_table() -> None:
    """x (B, P, C) with index=None gives what the per-vector gather over (B*P, C) gives (the inference path)."""
    torch.manual_seed(0)
    flow = ConditionalFlow(7, condition_dim=16, n_blocks=3).double()
    grid = GridEncoding.create(16, 3, 5)
    grid = GridEncoding(grid.columns.double(), grid.rows.double())
    x = torch.randn(4, 15, 7, dtype=torch.float64)
    whole = flow.log_prob(x, grid)
    gathered = flow.log_prob(x.reshape(-1, 7), grid, torch.arange(15).repeat(4)).view(4, 15)
    torch.testing.assert_close(whole, gathered, rtol=0, atol=1e-12)
