"""Lesson 5 reference: multi-head attention (wrapper, head splitting, the fused class, parameter counts)."""

import pytest
import torch
import torch.nn.functional as F
from tensor_helpers import DEVICES, randn
from torch import nn

import solutions as S

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}
LOOSE = dict(rtol=5e-2, atol=5e-2)

# (b, n, d_in, d_out, context_length, num_heads, qkv_bias)
MHA_CASES = [
    (1, 1, 4, 4, 4, 2, False),
    (2, 6, 3, 2, 6, 2, False),
    (2, 5, 6, 12, 8, 3, True),
    (3, 7, 8, 8, 7, 1, False),
    (2, 4, 5, 8, 4, 8, True),
]


def make(cls, *args, seed=0, dtype=torch.float64, device="cpu", **kwargs):
    torch.manual_seed(seed)
    return cls(*args, **kwargs).to(device=device, dtype=dtype)


def reference_mha(mha, x):
    """The same computation through PyTorch's fused causal attention, with mha's weights."""
    b, n, _ = x.shape
    h, hd = mha.num_heads, mha.d_out // mha.num_heads

    def heads(t):
        return t.view(b, n, h, hd).transpose(1, 2)  # (b, h, n, hd)

    out = F.scaled_dot_product_attention(
        heads(mha.W_query(x)), heads(mha.W_key(x)), heads(mha.W_value(x)), is_causal=True
    )
    return mha.out_proj(out.transpose(1, 2).reshape(b, n, h * hd))


def torch_multihead(mha):
    """An nn.MultiheadAttention (d_in == d_out) carrying mha's weights."""
    d = mha.d_out
    ref = nn.MultiheadAttention(d, mha.num_heads, bias=True, batch_first=True)
    ref = ref.to(device=mha.out_proj.weight.device, dtype=mha.out_proj.weight.dtype)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([mha.W_query.weight, mha.W_key.weight, mha.W_value.weight]))
        if mha.W_query.bias is None:
            ref.in_proj_bias.zero_()
        else:
            ref.in_proj_bias.copy_(torch.cat([mha.W_query.bias, mha.W_key.bias, mha.W_value.bias]))
        ref.out_proj.weight.copy_(mha.out_proj.weight)
        ref.out_proj.bias.copy_(mha.out_proj.bias)
    return ref.eval()


# --- MultiHeadAttentionWrapper ------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_does_the_wrapper_concatenate_its_causal_heads(dtype, device):
    for seed in range(3):
        mw = make(S.MultiHeadAttentionWrapper, 3, 2, 6, 0.0, num_heads=3, seed=seed, dtype=dtype, device=device).eval()
        assert isinstance(mw.heads, nn.ModuleList) and len(mw.heads) == 3
        assert all(isinstance(head, S.CausalAttention) for head in mw.heads)
        x = randn(torch.Generator().manual_seed(seed), 2, 6, 3, dtype=dtype, device=device)
        out = mw(x)
        assert out.shape == (2, 6, 6)
        torch.testing.assert_close(out, torch.cat([head(x) for head in mw.heads], dim=-1), **TOL[dtype])
        head = mw.heads[1]
        expected = F.scaled_dot_product_attention(head.W_query(x), head.W_key(x), head.W_value(x), is_causal=True)
        torch.testing.assert_close(out[..., 2:4], expected, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_does_the_wrapper_reproduce_the_book(device):
    # Book section 3.6.1: torch.manual_seed(123); MultiHeadAttentionWrapper(3, 2, 6, 0.0, num_heads=2).
    torch.manual_seed(123)
    mw = S.MultiHeadAttentionWrapper(3, 2, 6, 0.0, num_heads=2).to(device)
    out = mw(torch.stack((S.BOOK_INPUTS, S.BOOK_INPUTS)).to(device))
    assert out.shape == (2, 6, 4)
    expected = torch.tensor(
        [
            [-0.4519, 0.2216, 0.4772, 0.1063],
            [-0.5874, 0.0058, 0.5891, 0.3257],
            [-0.6300, -0.0632, 0.6202, 0.3860],
            [-0.5675, -0.0843, 0.5478, 0.3589],
            [-0.5526, -0.0981, 0.5321, 0.3428],
            [-0.5299, -0.1081, 0.5077, 0.3493],
        ],
        device=device,
    )
    torch.testing.assert_close(out[0], expected, rtol=0, atol=5.1e-5)


# --- split_heads / merge_heads ------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,n,d,h", [(1, 1, 1, 1), (2, 5, 12, 3), (3, 4, 8, 8), (2, 6, 6, 1)])
def test_are_split_and_merge_heads_inverses(b, n, d, h, dtype, device):
    x = randn(torch.Generator().manual_seed(0), b, n, d, dtype=dtype, device=device)
    heads = S.split_heads(x, h)
    assert heads.shape == (b, h, n, d // h)
    assert heads.dtype == dtype and heads.device.type == torch.device(device).type
    for i in range(h):  # head i holds features i*hd .. (i+1)*hd of every token
        assert torch.equal(heads[:, i], x[..., i * (d // h) : (i + 1) * (d // h)])
    assert torch.equal(S.merge_heads(heads), x)
    y = randn(torch.Generator().manual_seed(1), b, h, n, 2, dtype=dtype, device=device)
    merged = S.merge_heads(y)
    assert merged.shape == (b, n, h * 2)
    assert torch.equal(S.split_heads(merged, h), y)


def test_does_split_heads_refuse_an_indivisible_dimension():
    with pytest.raises(ValueError):
        S.split_heads(torch.zeros(1, 2, 5), 2)


# --- MultiHeadAttention -------------------------------------------------------------------------


def test_does_multi_head_attention_have_the_books_parts():
    mha = S.MultiHeadAttention(6, 12, 8, 0.25, num_heads=3)
    for name in ("W_query", "W_key", "W_value"):
        layer = getattr(mha, name)
        assert isinstance(layer, nn.Linear) and layer.weight.shape == (12, 6) and layer.bias is None
    assert isinstance(mha.out_proj, nn.Linear) and mha.out_proj.weight.shape == (12, 12)
    assert mha.out_proj.bias is not None
    assert isinstance(mha.dropout, nn.Dropout) and mha.dropout.p == 0.25
    assert mha.num_heads == 3 and mha.head_dim == 4 and mha.d_out == 12
    assert dict(mha.named_buffers())["mask"].dtype == torch.bool
    assert torch.equal(mha.mask, S.causal_mask(8))
    assert not any(isinstance(m, nn.MultiheadAttention) for m in mha.modules())


@pytest.mark.parametrize("d_out,num_heads", [(5, 2), (7, 3), (4, 8)])
def test_does_multi_head_attention_refuse_indivisible_heads(d_out, num_heads):
    with pytest.raises(ValueError):
        S.MultiHeadAttention(4, d_out, 6, 0.0, num_heads=num_heads)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", MHA_CASES, ids=[str(c) for c in MHA_CASES])
def test_does_multi_head_attention_equal_pytorchs_causal_sdpa(case, dtype, device):
    b, n, d_in, d_out, ctx, h, qkv_bias = case
    for seed in range(4):
        mha = make(
            S.MultiHeadAttention,
            d_in,
            d_out,
            ctx,
            0.5,
            num_heads=h,
            qkv_bias=qkv_bias,
            seed=seed,
            dtype=dtype,
            device=device,
        ).eval()
        x = randn(torch.Generator().manual_seed(seed), b, n, d_in, dtype=dtype, device=device)
        out = mha(x)
        assert out.shape == (b, n, d_out)
        torch.testing.assert_close(out, reference_mha(mha, x), **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_does_multi_head_attention_equal_nn_multiheadattention(qkv_bias, dtype, device):
    for seed in range(4):
        mha = make(
            S.MultiHeadAttention,
            8,
            8,
            10,
            0.0,
            num_heads=2,
            qkv_bias=qkv_bias,
            seed=seed,
            dtype=dtype,
            device=device,
        ).eval()
        ref = torch_multihead(mha)
        x = randn(torch.Generator().manual_seed(seed), 3, 10, 8, dtype=dtype, device=device)
        mask = ~S.causal_mask(10, device=device)  # nn.MultiheadAttention: True = may NOT attend
        expected, _ = ref(x, x, x, attn_mask=mask, need_weights=False)
        torch.testing.assert_close(mha(x), expected, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_does_multi_head_attention_reproduce_the_book(device):
    # Book section 3.6.2: torch.manual_seed(123); MultiHeadAttention(3, 2, 6, 0.0, num_heads=2).
    torch.manual_seed(123)
    mha = S.MultiHeadAttention(3, 2, 6, 0.0, num_heads=2).to(device)
    out = mha(torch.stack((S.BOOK_INPUTS, S.BOOK_INPUTS)).to(device))
    expected = torch.tensor(
        [
            [0.3190, 0.4858],
            [0.2943, 0.3897],
            [0.2856, 0.3593],
            [0.2693, 0.3873],
            [0.2639, 0.3928],
            [0.2575, 0.4028],
        ],
        device=device,
    )
    torch.testing.assert_close(out[0], expected, rtol=0, atol=5.1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "cls,args",
    [
        (S.CausalAttention, (4, 6, 9, 0.5)),
        (S.MultiHeadAttentionWrapper, (4, 3, 9, 0.5, 2)),
        (S.MultiHeadAttention, (4, 6, 9, 0.5, 3)),
    ],
    ids=["CausalAttention", "MultiHeadAttentionWrapper", "MultiHeadAttention"],
)
def test_do_future_tokens_never_change_earlier_outputs(cls, args, device):
    module = make(cls, *args, device=device).eval()
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        x = randn(gen, 2, 9, 4, device=device)
        for t in range(1, 9):
            x2 = x.clone()
            x2[:, t:] = randn(gen, 2, 9 - t, 4, device=device)
            out, out2 = module(x), module(x2)
            torch.testing.assert_close(out[:, :t], out2[:, :t], **TOL[torch.float64])
            assert not torch.allclose(out[:, t:], out2[:, t:])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "cls,args",
    [(S.MultiHeadAttentionWrapper, (4, 3, 8, 0.5, 2)), (S.MultiHeadAttention, (4, 6, 8, 0.5, 3))],
    ids=["wrapper", "mha"],
)
def test_is_dropout_active_only_in_training(cls, args, device):
    module = make(cls, *args, device=device)
    x = randn(torch.Generator().manual_seed(0), 2, 8, 4, device=device)
    out_eval = module.eval()(x)
    torch.testing.assert_close(module(x), out_eval, rtol=0, atol=0)
    torch.manual_seed(0)
    assert not torch.allclose(module.train()(x), out_eval)


@pytest.mark.parametrize("device", DEVICES)
def test_does_multi_head_attention_avoid_builtin_attention(monkeypatch, device):
    mha = make(S.MultiHeadAttention, 8, 8, 6, 0.0, num_heads=2, device=device).eval()
    x = randn(torch.Generator().manual_seed(0), 2, 6, 8, device=device)
    expected = reference_mha(mha, x)

    def boom(*args, **kwargs):
        raise AssertionError("built-in attention was called")

    monkeypatch.setattr(F, "scaled_dot_product_attention", boom)
    monkeypatch.setattr(F, "multi_head_attention_forward", boom)
    monkeypatch.setattr(nn.MultiheadAttention, "forward", boom)
    torch.testing.assert_close(mha(x), expected, **TOL[torch.float64])


@pytest.mark.parametrize("device", DEVICES)
def test_does_multi_head_attention_refuse_more_tokens_than_its_context(device):
    mha = make(S.MultiHeadAttention, 4, 4, 3, 0.0, num_heads=2, device=device)
    with pytest.raises(ValueError):
        mha(torch.zeros(1, 4, 4, dtype=torch.float64, device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_do_lesson5_outputs_keep_dtype_and_device(dtype, device):
    x = randn(torch.Generator().manual_seed(0), 2, 5, 4, dtype=dtype, device=device)
    for module in (
        make(S.MultiHeadAttentionWrapper, 4, 3, 6, 0.1, 2, dtype=dtype, device=device),
        make(S.MultiHeadAttention, 4, 6, 6, 0.1, 3, dtype=dtype, device=device),
    ):
        for train in (False, True):
            out = module.train(train)(x)
            assert out.dtype == dtype and out.device.type == torch.device(device).type
        masks = [b for name, b in module.named_buffers() if name.endswith("mask")]
        assert masks and all(m.dtype == torch.bool for m in masks)


@pytest.mark.parametrize("device", DEVICES)
def test_is_bfloat16_multi_head_attention_close_to_float64(device):
    mha = make(S.MultiHeadAttention, 8, 8, 6, 0.0, 2, device=device).eval()
    x = randn(torch.Generator().manual_seed(0), 2, 6, 8, device=device)
    ref = mha(x)
    out = mha.to(torch.bfloat16)(x.bfloat16())
    torch.testing.assert_close(out.double(), ref, **LOOSE)


# --- count_parameters ---------------------------------------------------------------------------


def test_does_gpt2_small_attention_have_2360064_parameters():
    mha = S.MultiHeadAttention(768, 768, 1024, 0.0, num_heads=12, qkv_bias=False)
    assert S.count_parameters(mha) == 2_360_064
    assert isinstance(S.count_parameters(mha), int)
    assert S.count_parameters(S.MultiHeadAttention(768, 768, 16, 0.0, 12, qkv_bias=True)) == 2_360_064 + 3 * 768


def test_does_count_parameters_skip_frozen_parameters_and_buffers():
    mha = S.MultiHeadAttention(6, 6, 4, 0.0, num_heads=2)
    assert S.count_parameters(mha) == 4 * 36 + 6
    mha.out_proj.requires_grad_(False)
    assert S.count_parameters(mha) == 3 * 36
    mha.requires_grad_(False)
    assert S.count_parameters(mha) == 0
    assert S.count_parameters(nn.Linear(3, 2)) == 8
    assert S.count_parameters(S.MultiHeadAttentionWrapper(3, 2, 6, 0.0, num_heads=2)) == 2 * 3 * 6
