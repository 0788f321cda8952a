"""Lesson 3 reference: SelfAttention_v1, SelfAttention_v2 and transfer_weights."""

import pytest
import torch
import torch.nn.functional as F
from tensor_helpers import DEVICES, randn
from torch import nn

import solutions as S

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}
LOOSE = dict(rtol=5e-2, atol=5e-2)


def reference_attention(x, W_q, W_k, W_v):
    """softmax(x W_q (x W_k)^T / sqrt(d_k)) x W_v, through PyTorch's own attention."""
    return F.scaled_dot_product_attention(x @ W_q, x @ W_k, x @ W_v)


def test_are_the_v1_parameters_d_in_by_d_out():
    torch.manual_seed(0)
    sa = S.SelfAttention_v1(3, 2)
    for name in ("W_query", "W_key", "W_value"):
        p = getattr(sa, name)
        assert isinstance(p, nn.Parameter) and p.shape == (3, 2)
        assert ((p >= 0) & (p < 1)).all()  # torch.rand, as in the book
    assert S.count_parameters(sa) == 18


def test_are_the_v2_projections_linear_layers():
    sa = S.SelfAttention_v2(3, 2)
    for name in ("W_query", "W_key", "W_value"):
        layer = getattr(sa, name)
        assert isinstance(layer, nn.Linear) and layer.weight.shape == (2, 3) and layer.bias is None
    assert all(
        getattr(S.SelfAttention_v2(3, 2, qkv_bias=True), n).bias is not None for n in ("W_query", "W_key", "W_value")
    )


@pytest.mark.parametrize("device", DEVICES)
def test_does_v1_reproduce_the_books_second_context_vector(device):
    # Book section 3.4.1: torch.manual_seed(123), d_in=3, d_out=2; second row 0.3061, 0.8210.
    torch.manual_seed(123)
    sa = S.SelfAttention_v1(3, 2).to(device)
    out = sa(S.BOOK_INPUTS.to(device))
    assert out.shape == (6, 2)
    torch.testing.assert_close(out[1], torch.tensor([0.3061, 0.8210], device=device), rtol=0, atol=5.1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_does_v2_reproduce_the_books_context_vectors(device):
    # Book section 3.4.2: torch.manual_seed(789), SelfAttention_v2(3, 2), first row -0.0739, 0.0713.
    torch.manual_seed(789)
    sa = S.SelfAttention_v2(3, 2).to(device)
    out = sa(S.BOOK_INPUTS.to(device))
    torch.testing.assert_close(out[0], torch.tensor([-0.0739, 0.0713], device=device), rtol=0, atol=5.1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch,n,d_in,d_out", [((), 1, 3, 2), ((), 6, 3, 2), ((2,), 5, 4, 7), ((2, 3), 4, 6, 6)])
def test_does_v1_compute_scaled_dot_product_attention(batch, n, d_in, d_out, dtype, device):
    for seed in range(5):
        torch.manual_seed(seed)
        sa = S.SelfAttention_v1(d_in, d_out).to(device=device, dtype=dtype)
        x = randn(torch.Generator().manual_seed(seed), *batch, n, d_in, dtype=dtype, device=device)
        out = sa(x)
        assert out.shape == (*batch, n, d_out)
        expected = reference_attention(x, sa.W_query, sa.W_key, sa.W_value)
        torch.testing.assert_close(out, expected, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_does_v2_compute_scaled_dot_product_attention(qkv_bias, dtype, device):
    for seed in range(5):
        torch.manual_seed(seed)
        sa = S.SelfAttention_v2(4, 5, qkv_bias=qkv_bias).to(device=device, dtype=dtype)
        x = randn(torch.Generator().manual_seed(seed), 2, 6, 4, dtype=dtype, device=device)
        out = sa(x)
        expected = F.scaled_dot_product_attention(sa.W_query(x), sa.W_key(x), sa.W_value(x))
        assert out.shape == (2, 6, 5)
        torch.testing.assert_close(out, expected, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d_in,d_out", [(3, 2), (2, 5), (4, 4)])
def test_does_transfer_weights_make_v1_and_v2_agree(d_in, d_out, dtype, device):
    for seed in range(5):
        torch.manual_seed(seed)
        sa_v1 = S.SelfAttention_v1(d_in, d_out).to(device=device, dtype=dtype)
        sa_v2 = S.SelfAttention_v2(d_in, d_out).to(device=device, dtype=dtype)
        x = randn(torch.Generator().manual_seed(seed), 3, 7, d_in, dtype=dtype, device=device)
        assert not torch.allclose(sa_v1(x), sa_v2(x))
        assert S.transfer_weights(sa_v2, sa_v1) is None
        torch.testing.assert_close(sa_v1(x), sa_v2(x), **TOL[dtype])
        torch.testing.assert_close(sa_v1.W_query, sa_v2.W_query.weight.T, rtol=0, atol=0)
        # The copy is in place and leaves ordinary trainable leaf parameters behind.
        for name in ("W_query", "W_key", "W_value"):
            p = getattr(sa_v1, name)
            assert isinstance(p, nn.Parameter) and p.is_leaf and p.requires_grad and p.grad_fn is None
            assert p.shape == (d_in, d_out)


def test_does_transfer_weights_refuse_biases_and_leave_v1_untouched():
    torch.manual_seed(0)
    sa_v1 = S.SelfAttention_v1(3, 2)
    before = {k: v.clone() for k, v in sa_v1.state_dict().items()}
    with pytest.raises(ValueError):
        S.transfer_weights(S.SelfAttention_v2(3, 2, qkv_bias=True), sa_v1)
    for k, v in sa_v1.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("device", DEVICES)
def test_are_scores_scaled_by_sqrt_d_out(device):
    sa = S.SelfAttention_v1(1, 4).to(device)
    with torch.no_grad():
        sa.W_query.fill_(1.0)
        sa.W_key.fill_(1.0)
        sa.W_value.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0]], device=device))
    x = torch.tensor([[1.0], [2.0]], device=device)
    # scores [[4, 8], [8, 16]] / sqrt(4) -> softmax rows of [[2, 4], [4, 8]]
    weights = torch.softmax(torch.tensor([[2.0, 4.0], [4.0, 8.0]], device=device), dim=-1)
    expected = weights @ torch.tensor([[1.0], [2.0]], device=device)
    torch.testing.assert_close(sa(x)[:, :1], expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", [S.SelfAttention_v1, S.SelfAttention_v2], ids=["v1", "v2"])
def test_do_lesson3_outputs_keep_dtype_and_device(cls, dtype, device):
    torch.manual_seed(0)
    sa = cls(3, 2).to(device=device, dtype=dtype)
    x = S.BOOK_INPUTS.to(device=device, dtype=dtype)
    out = sa(x)
    assert out.dtype == dtype and out.device.type == torch.device(device).type
    assert out.shape == (6, 2)


@pytest.mark.parametrize("device", DEVICES)
def test_is_bfloat16_v2_close_to_float64(device):
    torch.manual_seed(0)
    sa = S.SelfAttention_v2(8, 4).to(device)
    x = randn(torch.Generator().manual_seed(0), 2, 5, 8, device=device)
    ref = sa.to(torch.float64)(x)
    out = sa.to(torch.bfloat16)(x.bfloat16())
    torch.testing.assert_close(out.double(), ref, **LOOSE)
