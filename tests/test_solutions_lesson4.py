"""Lesson 4 reference: causal masks, causal attention weights and CausalAttention."""

import math

import pytest
import torch
import torch.nn.functional as F
from tensor_helpers import DEVICES, randn
from torch import nn

import solutions as S

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}
LOOSE = dict(rtol=5e-2, atol=5e-2)


def make_causal(d_in, d_out, context_length, dropout, qkv_bias=False, seed=0, dtype=torch.float64, device="cpu"):
    torch.manual_seed(seed)
    return S.CausalAttention(d_in, d_out, context_length, dropout, qkv_bias).to(device=device, dtype=dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_is_causal_mask_lower_triangular_and_boolean(device):
    mask = S.causal_mask(4, device=device)
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool, device=device)
    assert mask.dtype == torch.bool and mask.device.type == torch.device(device).type
    assert torch.equal(mask, expected)
    assert torch.equal(S.causal_mask(1, device=device), torch.ones(1, 1, dtype=torch.bool, device=device))
    assert S.causal_mask(3).device.type == "cpu"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch,n", [((), 1), ((), 6), ((2,), 5), ((2, 3), 7)])
def test_are_causal_weights_zero_above_the_diagonal_and_rows_sum_to_one(batch, n, dtype, device):
    for seed in range(5):
        scores = randn(torch.Generator().manual_seed(seed), *batch, n, n, dtype=dtype, device=device, scale=3)
        weights = S.causal_attention_weights(scores)
        assert weights.shape == (*batch, n, n)
        assert (weights.triu(diagonal=1) == 0).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(*batch, n, dtype=dtype, device=device), **TOL[dtype])
        # Unscaled: exactly the book's masked softmax of the scores as given.
        masked = scores.masked_fill(~S.causal_mask(n, device=device), float("-inf"))
        torch.testing.assert_close(weights, torch.softmax(masked, dim=-1), **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_does_causal_attention_weights_match_the_books_renormalised_weights(device):
    # Book section 3.5.1: masking and renormalising equals the -inf trick. The first row is [1, 0, ...].
    scores = S.attention_scores(S.BOOK_INPUTS.to(device))
    weights = S.causal_attention_weights(scores)
    simple = torch.softmax(scores, dim=-1) * S.causal_mask(6, device=device)
    torch.testing.assert_close(weights, simple / simple.sum(-1, keepdim=True))
    assert weights[0].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_do_scaled_causal_weights_give_pytorchs_causal_attention(dtype, device):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (randn(gen, 2, 3, 6, 4, dtype=dtype, device=device) for _ in range(3))
    weights = S.causal_attention_weights(q @ k.transpose(-2, -1) / math.sqrt(4))
    torch.testing.assert_close(weights @ v, F.scaled_dot_product_attention(q, k, v, is_causal=True), **TOL[dtype])


def test_does_causal_attention_have_the_books_parts():
    ca = S.CausalAttention(3, 2, context_length=6, dropout=0.5)
    for name in ("W_query", "W_key", "W_value"):
        assert isinstance(getattr(ca, name), nn.Linear) and getattr(ca, name).bias is None
    assert S.CausalAttention(3, 2, 6, 0.0, qkv_bias=True).W_query.bias is not None
    assert isinstance(ca.dropout, nn.Dropout) and ca.dropout.p == 0.5
    buffers = dict(ca.named_buffers())
    assert "mask" in buffers and buffers["mask"].dtype == torch.bool
    assert torch.equal(buffers["mask"], S.causal_mask(6))
    assert "mask" not in dict(ca.named_parameters())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "b,n,d_in,d_out,ctx,qkv_bias",
    [(1, 1, 3, 2, 4, False), (2, 6, 3, 2, 6, False), (3, 5, 4, 7, 8, True), (2, 8, 6, 6, 8, False)],
)
def test_does_causal_attention_equal_pytorchs_causal_sdpa(b, n, d_in, d_out, ctx, qkv_bias, dtype, device):
    for seed in range(5):
        ca = make_causal(d_in, d_out, ctx, 0.5, qkv_bias, seed=seed, dtype=dtype, device=device).eval()
        x = randn(torch.Generator().manual_seed(seed), b, n, d_in, dtype=dtype, device=device)
        out = ca(x)
        assert out.shape == (b, n, d_out)
        expected = F.scaled_dot_product_attention(ca.W_query(x), ca.W_key(x), ca.W_value(x), is_causal=True)
        torch.testing.assert_close(out, expected, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_does_causal_attention_reproduce_the_book(device):
    # Book section 3.5.3: torch.manual_seed(123); CausalAttention(3, 2, 6, 0.0) on a batch of two copies.
    torch.manual_seed(123)
    ca = S.CausalAttention(3, 2, 6, 0.0).to(device)
    batch = torch.stack((S.BOOK_INPUTS, S.BOOK_INPUTS)).to(device)
    out = ca(batch)
    assert out.shape == (2, 6, 2)
    expected = torch.tensor(
        [
            [-0.4519, 0.2216],
            [-0.5874, 0.0058],
            [-0.6300, -0.0632],
            [-0.5675, -0.0843],
            [-0.5526, -0.0981],
            [-0.5299, -0.1081],
        ],
        device=device,
    )
    torch.testing.assert_close(out[0], expected, rtol=0, atol=5.1e-5)
    torch.testing.assert_close(out[1], expected, rtol=0, atol=5.1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_do_future_tokens_never_change_earlier_outputs(dtype, device):
    ca = make_causal(4, 5, 10, 0.3, dtype=dtype, device=device).eval()
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        x = randn(gen, 2, 7, 4, dtype=dtype, device=device)
        for t in range(1, 7):
            x2 = x.clone()
            x2[:, t:] = randn(gen, 2, 7 - t, 4, dtype=dtype, device=device)
            out, out2 = ca(x), ca(x2)
            torch.testing.assert_close(out[:, :t], out2[:, :t], **TOL[dtype])
            assert not torch.allclose(out[:, t:], out2[:, t:])  # the change did reach later tokens


@pytest.mark.parametrize("device", DEVICES)
def test_is_causal_attention_deterministic_in_eval_and_dropped_out_in_train(device):
    ca = make_causal(4, 6, 8, 0.5, device=device)
    x = randn(torch.Generator().manual_seed(0), 2, 8, 4, device=device)
    ca.eval()
    out_eval = ca(x)
    torch.testing.assert_close(ca(x), out_eval, rtol=0, atol=0)
    ca.train()
    torch.manual_seed(1)
    out_train = ca(x)
    assert out_train.shape == out_eval.shape
    assert not torch.allclose(out_train, out_eval)
    # With p = 0 training mode changes nothing: dropout is the only difference.
    ca0 = make_causal(4, 6, 8, 0.0, device=device).train()
    torch.testing.assert_close(ca0(x), ca0.eval()(x), rtol=0, atol=0)


def test_is_dropout_applied_to_the_attention_weights():
    # Make every value vector all ones. With dropout on the weights, output i is
    # 2 * (sum of the kept weights of row i): rarely exactly 0 or 2. Dropout on the output instead
    # would give only 0s and 2s.
    ca = make_causal(2, 3, 6, 0.5).train()
    with torch.no_grad():
        ca.W_value.weight.zero_()
        ca.W_value.weight[:, 0] = 1.0
    x = randn(torch.Generator().manual_seed(0), 1, 6, 2)
    x[..., 0] = 1.0
    torch.manual_seed(3)
    out = ca(x)
    assert ((out != 0) & (out != 2)).any()
    assert torch.equal(out[..., 0], out[..., 1])  # one dropout mask per weight, shared by all features


@pytest.mark.parametrize("device", DEVICES)
def test_does_causal_attention_refuse_more_tokens_than_its_context(device):
    ca = make_causal(3, 2, 4, 0.0, device=device)
    with pytest.raises(ValueError):
        ca(torch.zeros(1, 5, 3, dtype=torch.float64, device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_do_lesson4_outputs_keep_dtype_and_device(dtype, device):
    ca = make_causal(3, 2, 6, 0.1, dtype=dtype, device=device).eval()
    assert ca.mask.dtype == torch.bool and ca.mask.device.type == torch.device(device).type
    x = S.BOOK_INPUTS.to(device=device, dtype=dtype).unsqueeze(0)
    out = ca(x)
    weights = S.causal_attention_weights(S.attention_scores(x))
    for t in (out, weights):
        assert t.dtype == dtype and t.device.type == torch.device(device).type
    ca.train()
    assert ca(x).dtype == dtype


@pytest.mark.parametrize("device", DEVICES)
def test_is_bfloat16_causal_attention_close_to_float64(device):
    ca = make_causal(8, 4, 6, 0.0, device=device).eval()
    x = randn(torch.Generator().manual_seed(0), 2, 6, 8, device=device)
    ref = ca(x)
    out = ca.to(torch.bfloat16)(x.bfloat16())
    torch.testing.assert_close(out.double(), ref, **LOOSE)
