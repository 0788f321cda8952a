"""Lesson 2 reference: projections and scaled dot-product attention.

Does the reference agree with ``torch.nn.functional.scaled_dot_product_attention`` for every
shape and mask the spec allows, without calling it?
"""

import math

import pytest
import torch
import torch.nn.functional as F
from tensor_helpers import DEVICES, randn

import solutions as S

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}
LOOSE = dict(rtol=5e-2, atol=5e-2)  # bfloat16 against a float64 reference
SEEDS = range(8)

# (batch dims, n_q, n_k, d_k, d_v)
SHAPES = [
    ((), 1, 1, 1, 1),
    ((), 6, 6, 3, 3),
    ((2,), 5, 7, 4, 3),
    ((2, 3), 6, 6, 8, 8),
    ((4,), 9, 2, 16, 5),
    ((3,), 1, 5, 2, 6),
]
SHAPE_IDS = ["-".join(map(str, (*b, nq, nk, dk, dv))) for b, nq, nk, dk, dv in SHAPES]


def qkv(gen, batch, n_q, n_k, d_k, d_v, dtype, device):
    return (
        randn(gen, *batch, n_q, d_k, dtype=dtype, device=device),
        randn(gen, *batch, n_k, d_k, dtype=dtype, device=device),
        randn(gen, *batch, n_k, d_v, dtype=dtype, device=device),
    )


def random_mask(gen, shape, device):
    """Random boolean mask with at least one True per row (so no row is all -inf)."""
    mask = torch.rand(*shape, generator=gen) < 0.6
    mask[..., torch.randint(shape[-1], (), generator=gen)] = True
    return mask.to(device)


def forbid_builtin_sdpa(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the built-in scaled_dot_product_attention was called")

    monkeypatch.setattr(F, "scaled_dot_product_attention", boom)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch,n,d_in,d_k,d_v", [((), 1, 3, 2, 2), ((), 6, 3, 2, 4), ((2, 3), 5, 4, 6, 3)])
def test_does_project_qkv_multiply_by_each_matrix(batch, n, d_in, d_k, d_v, dtype, device):
    gen = torch.Generator().manual_seed(0)
    x = randn(gen, *batch, n, d_in, dtype=dtype, device=device)
    W_q = randn(gen, d_in, d_k, dtype=dtype, device=device)
    W_k = randn(gen, d_in, d_k, dtype=dtype, device=device)
    W_v = randn(gen, d_in, d_v, dtype=dtype, device=device)
    q, k, v = S.project_qkv(x, W_q, W_k, W_v)
    assert q.shape == (*batch, n, d_k) and k.shape == (*batch, n, d_k) and v.shape == (*batch, n, d_v)
    torch.testing.assert_close(q, torch.einsum("...nd,dk->...nk", x, W_q), **TOL[dtype])
    torch.testing.assert_close(k, torch.einsum("...nd,dk->...nk", x, W_k), **TOL[dtype])
    torch.testing.assert_close(v, torch.einsum("...nd,dk->...nk", x, W_v), **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_does_sdpa_agree_with_pytorch_without_a_mask(shape, dtype, device):
    batch, n_q, n_k, d_k, d_v = shape
    for seed in SEEDS:
        gen = torch.Generator().manual_seed(seed)
        q, k, v = qkv(gen, batch, n_q, n_k, d_k, d_v, dtype, device)
        out, weights = S.scaled_dot_product_attention(q, k, v)
        assert out.shape == (*batch, n_q, d_v) and weights.shape == (*batch, n_q, n_k)
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), **TOL[dtype])
        expected_w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d_k), dim=-1)
        torch.testing.assert_close(weights, expected_w, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_does_sdpa_agree_with_pytorch_for_boolean_masks(shape, dtype, device):
    batch, n_q, n_k, d_k, d_v = shape
    # full, shared by the batch, per key only, per leading batch index (e.g. (2, 1, 1, n_k))
    per_batch = (*batch[:1], *[1] * (len(batch[1:]) + 1), n_k)
    mask_shapes = [(*batch, n_q, n_k), (n_q, n_k), (n_k,), per_batch]
    for seed in SEEDS:
        gen = torch.Generator().manual_seed(seed)
        q, k, v = qkv(gen, batch, n_q, n_k, d_k, d_v, dtype, device)
        for mask_shape in mask_shapes:
            mask = random_mask(gen, mask_shape, device)
            out, weights = S.scaled_dot_product_attention(q, k, v, mask=mask)
            assert out.shape == (*batch, n_q, d_v) and weights.shape == (*batch, n_q, n_k)
            # (PyTorch's CPU kernel rejects some broadcastable mask shapes: give it the full one.)
            full_mask = mask.expand(*batch, n_q, n_k)
            expected = F.scaled_dot_product_attention(q, k, v, attn_mask=full_mask)
            torch.testing.assert_close(out, expected, **TOL[dtype])
            assert (weights.masked_select(~full_mask) == 0).all()  # masked keys get weight 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_does_a_causal_mask_equal_is_causal(shape, dtype, device):
    batch, n_q, n_k, d_k, d_v = shape
    for seed in SEEDS:
        gen = torch.Generator().manual_seed(seed)
        q, k, v = qkv(gen, batch, n_q, n_k, d_k, d_v, dtype, device)
        # top-left aligned, like is_causal=True; for n_q == n_k this is causal_mask(n).
        mask = torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril()
        if n_q == n_k:
            assert torch.equal(mask, S.causal_mask(n_q, device=device))
        out, weights = S.scaled_dot_product_attention(q, k, v, mask=mask)
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), **TOL[dtype])
        assert (weights.triu(diagonal=1) == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_do_the_weights_rows_sum_to_one(dtype, device):
    gen = torch.Generator().manual_seed(0)
    q, k, v = qkv(gen, (2, 3), 5, 7, 4, 2, dtype, device)
    mask = random_mask(gen, (2, 3, 5, 7), device)
    for m in (None, mask):
        _, weights = S.scaled_dot_product_attention(q, k, v, mask=m)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 5, dtype=dtype, device=device), **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_are_scores_divided_by_sqrt_d_k(device):
    # One query, two keys: scores 0 and 16, d_k = 4, so the weights are softmax([0, 8]).
    q = torch.tensor([[2.0, 2.0, 2.0, 2.0]], device=device)
    k = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]], device=device)
    v = torch.tensor([[1.0], [0.0]], device=device)
    _, weights = S.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(weights, torch.softmax(torch.tensor([[0.0, 8.0]], device=device), dim=-1))


@pytest.mark.parametrize("device", DEVICES)
def test_does_sdpa_never_call_the_builtin(monkeypatch, device):
    gen = torch.Generator().manual_seed(0)
    q, k, v = qkv(gen, (2,), 4, 6, 3, 5, torch.float64, device)
    mask = random_mask(gen, (4, 6), device)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    forbid_builtin_sdpa(monkeypatch)
    with pytest.raises(AssertionError):
        F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(S.scaled_dot_product_attention(q, k, v, mask=mask)[0], expected)


@pytest.mark.parametrize("device", DEVICES)
def test_does_a_non_boolean_mask_fail_loudly(device):
    q = torch.zeros(2, 3, device=device)
    with pytest.raises(TypeError):
        S.scaled_dot_product_attention(q, q, q, mask=torch.ones(2, 2, device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_do_lesson2_outputs_keep_dtype_and_device(dtype, device):
    gen = torch.Generator().manual_seed(0)
    x = randn(gen, 2, 5, 3, dtype=dtype, device=device)
    W = [randn(gen, 3, d, dtype=dtype, device=device) for d in (4, 4, 2)]
    q, k, v = S.project_qkv(x, *W)
    out, weights = S.scaled_dot_product_attention(q, k, v, mask=S.causal_mask(5, device=device))
    for t in (q, k, v, out, weights):
        assert t.dtype == dtype
        assert t.device.type == torch.device(device).type


@pytest.mark.parametrize("device", DEVICES)
def test_is_bfloat16_sdpa_close_to_float64(device):
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        q, k, v = qkv(gen, (2,), 6, 9, 8, 4, torch.bfloat16, device)
        mask = random_mask(gen, (6, 9), device)
        out, weights = S.scaled_dot_product_attention(q, k, v, mask=mask)
        ref_out, ref_w = S.scaled_dot_product_attention(q.double(), k.double(), v.double(), mask=mask)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.double(), ref_out, **LOOSE)
        torch.testing.assert_close(weights.double(), ref_w, **LOOSE)
