"""Lesson 10 reference: FlashAttention's backward pass by recomputation, the autograd Function and its wrapper."""

import math

import pytest
import torch
from flash_helpers import (
    FLASH_BLOCKS,
    LOOSE,
    SHAPE_IDS,
    SHAPES,
    TOL,
    NumelRecorder,
    exact_attention,
    exact_gradients,
    qkv,
)
from tensor_helpers import DEVICES, randn

import solutions as S


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_does_the_flash_backward_equal_autograd(shape, causal, dtype, device):
    batch, n_q, n_k, d, d_v = shape
    gen = torch.Generator().manual_seed(2)
    q, k, v = qkv(gen, batch, n_q, n_k, d, d_v, dtype, device)
    grad_out = randn(gen, *batch, n_q, d_v, dtype=dtype, device=device)
    expected = exact_gradients(q, k, v, causal, grad_out)
    for block_q, block_k in FLASH_BLOCKS:
        out, lse = S.flash_attention_forward(q, k, v, causal, block_q, block_k)
        grads = S.flash_attention_backward(q, k, v, out, lse, grad_out, causal, block_q, block_k)
        for name, got, want in zip("qkv", grads, expected, strict=True):
            assert got.shape == want.shape and got.dtype == dtype, name
            torch.testing.assert_close(got, want, **TOL[dtype],
                                       msg=lambda m, n=name, b=(block_q, block_k): f"d{n} {b}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_does_flash_attention_give_autograds_gradients(causal, device):
    gen = torch.Generator().manual_seed(3)
    for batch, n_q, n_k, d, d_v in SHAPES:
        q, k, v = qkv(gen, batch, n_q, n_k, d, d_v, torch.float64, device)
        grad_out = randn(gen, *batch, n_q, d_v, device=device)
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = S.flash_attention(*leaves, causal=causal, block_q=3, block_k=2)
        torch.testing.assert_close(out, exact_attention(q, k, v, causal)[0], **TOL[torch.float64])
        out.backward(grad_out)
        for leaf, want in zip(leaves, exact_gradients(q, k, v, causal, grad_out), strict=True):
            torch.testing.assert_close(leaf.grad, want, **TOL[torch.float64])
        # the defaults (64 x 64 tiles) and the Function called directly give the same
        torch.testing.assert_close(S.FlashAttentionFunction.apply(q, k, v, causal, 64, 64),
                                   S.flash_attention(q, k, v, causal), **TOL[torch.float64])


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_does_flash_attention_function_pass_gradcheck(causal):
    gen = torch.Generator().manual_seed(4)
    for batch, n_q, n_k in [((2,), 5, 7), ((), 7, 4), ((1, 2), 6, 6)]:
        q, k, v = (t.requires_grad_() for t in qkv(gen, batch, n_q, n_k, 3, 2, torch.float64, "cpu"))
        assert torch.autograd.gradcheck(lambda a, b, c: S.FlashAttentionFunction.apply(a, b, c, causal, 2, 3),
                                        (q, k, v))


def test_does_flash_attention_broadcast_batch_dimensions():
    gen = torch.Generator().manual_seed(5)
    q = randn(gen, 2, 1, 6, 4)  # (batch, 1 head, n_q, d)
    k, v = randn(gen, 1, 3, 9, 4), randn(gen, 1, 3, 9, 5)  # (1, heads, n_k, ...)
    grad_out = randn(gen, 2, 3, 6, 5)
    out, lse = S.flash_attention_forward(q, k, v, True, 4, 4)
    expected, expected_lse = exact_attention(q, k, v, True)
    torch.testing.assert_close(out, expected, **TOL[torch.float64])
    torch.testing.assert_close(lse, expected_lse, **TOL[torch.float64])
    grads = S.flash_attention_backward(q, k, v, out, lse, grad_out, True, 4, 4)
    for got, want in zip(grads, exact_gradients(q, k, v, True, grad_out), strict=True):
        torch.testing.assert_close(got, want, **TOL[torch.float64])


def test_does_flash_attention_function_save_only_q_k_v_out_lse():
    gen = torch.Generator().manual_seed(6)
    q, k, v = (t.requires_grad_() for t in qkv(gen, (2,), 6, 8, 4, 3, torch.float64, "cpu"))
    out = S.flash_attention(q, k, v, causal=True, block_q=2, block_k=4)
    node = out.grad_fn
    saved = node.saved_tensors
    assert len(saved) == 5
    expected_out, lse = S.flash_attention_forward(q, k, v, True, 2, 4)
    for got, want in zip(saved, (q, k, v, expected_out, lse), strict=True):
        assert torch.equal(got, want)
    assert (node.causal, node.block_q, node.block_k) == (True, 2, 4)


@pytest.mark.parametrize("device", DEVICES)
def test_are_half_precision_inputs_accumulated_in_float32(device):
    gen = torch.Generator().manual_seed(7)
    q, k, v = qkv(gen, (2,), 9, 11, 8, 4, torch.bfloat16, device)
    out, lse = S.flash_attention_forward(q, k, v, True, 4, 4)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    expected, expected_lse = exact_attention(q.double(), k.double(), v.double(), True)
    torch.testing.assert_close(out.double(), expected, **LOOSE)
    torch.testing.assert_close(lse.double(), expected_lse, rtol=1e-5, atol=1e-5)  # inputs are exact in float32
    grad_out = randn(gen, 2, 9, 4, dtype=torch.bfloat16, device=device)
    grads = S.flash_attention_backward(q, k, v, out, lse, grad_out, True, 4, 4)
    want = exact_gradients(q.double(), k.double(), v.double(), True, grad_out.double())
    for got, w, t in zip(grads, want, (q, k, v), strict=True):
        assert got.dtype == torch.bfloat16 and got.shape == t.shape
        torch.testing.assert_close(got.double(), w, rtol=1e-1, atol=1e-1)


def test_is_a_query_with_no_key_zero_with_lse_minus_infinity():
    # The only way to see no key with top-left causal masking is to have no keys at all.
    q, k, v = torch.randn(2, 3, 4, dtype=torch.float64), torch.zeros(2, 0, 4, dtype=torch.float64), \
        torch.zeros(2, 0, 5, dtype=torch.float64)
    out, lse = S.flash_attention_forward(q, k, v, causal=True, block_q=2, block_k=2)
    assert torch.equal(out, torch.zeros(2, 3, 5, dtype=torch.float64))
    assert torch.equal(lse, torch.full((2, 3), -math.inf, dtype=torch.float64))
    dq, dk, dv = S.flash_attention_backward(q, k, v, out, lse, torch.ones(2, 3, 5, dtype=torch.float64))
    assert torch.equal(dq, torch.zeros_like(q)) and dk.shape == k.shape and dv.shape == v.shape
    # and huge scores (around 1e4) stay finite in both directions
    gen = torch.Generator().manual_seed(8)
    q, k, v = qkv(gen, (2,), 8, 20, 4, 3, torch.float64, "cpu", scale=50.0)
    out, lse = S.flash_attention_forward(q, k, v, True, 3, 3)
    grads = S.flash_attention_backward(q, k, v, out, lse, torch.ones_like(out), True, 3, 3)
    assert all(torch.isfinite(t).all() for t in (out, lse, *grads))
    torch.testing.assert_close(lse, exact_attention(q, k, v, True)[1], **TOL[torch.float64])


def test_do_the_flash_functions_refuse_empty_tiles():
    q = torch.zeros(2, 3)
    for bq, bk in [(0, 2), (2, 0), (-1, 4)]:
        with pytest.raises(ValueError):
            S.flash_attention_forward(q, q, q, block_q=bq, block_k=bk)
        with pytest.raises(ValueError):
            S.flash_attention_backward(q, q, q, q, q[:, 0], q, block_q=bq, block_k=bk)



@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_does_no_flash_function_create_an_n_q_by_n_k_tensor(causal):
    gen = torch.Generator().manual_seed(9)
    n_q, n_k, bq, bk = 48, 40, 12, 10  # every legitimate tensor (2 x 48 x 8, 2 x 12 x 10) is far smaller
    q, k, v = qkv(gen, (2,), n_q, n_k, 8, 8, torch.float64, "cpu")
    grad_out = randn(gen, 2, n_q, 8)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    runs = {
        "forward": lambda: S.flash_attention_forward(q, k, v, causal, bq, bk),
        "backward": lambda: S.flash_attention_backward(q, k, v, *S.flash_attention_forward(q, k, v, causal, bq, bk),
                                                       grad_out, causal, bq, bk),
        "flash_attention + backward": lambda: S.flash_attention(*leaves, causal, bq, bk).backward(grad_out),
        "online_softmax_attention": lambda: S.online_softmax_attention(q, k, v, bk, causal),
    }
    with NumelRecorder() as probe:  # the probe sees an (n_q, n_k) tensor: it works
        exact_attention(q, k, v, causal)
    assert probe.largest[0] >= n_q * n_k
    for name, run in runs.items():
        with NumelRecorder() as probe:
            run()
        assert 0 < probe.largest[0] < n_q * n_k, f"{name}: {probe.largest}"
