"""Lesson 6 reference: the sinusoidal positional encoding and the rotary position embedding (RoPE)."""

import math

import pytest
import torch
from conftest import cpu_and_cuda

import solutions as S

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-6, atol=1e-6),
       torch.bfloat16: dict(rtol=1e-2, atol=1e-2)}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(seed, *shape, dtype=torch.float64, device="cpu"):
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float64).to(device=device, dtype=dtype)


# --- sinusoidal_positional_encoding --------------------------------------------------------------------


@cpu_and_cuda()
def test_does_position_zero_hold_sin_0_and_cos_0(device):
    pe = S.sinusoidal_positional_encoding(7, 10, device=device)
    assert pe.shape == (7, 10) and pe.dtype == torch.float32 and pe.device.type == device
    assert torch.equal(pe[0].cpu(), torch.tensor([0.0, 1.0] * 5))


def test_are_the_first_pair_sin_p_and_cos_p():
    pe = S.sinusoidal_positional_encoding(50, 8, dtype=torch.float64)
    p = torch.arange(50, dtype=torch.float64)
    torch.testing.assert_close(pe[:, 0], torch.sin(p), rtol=0, atol=1e-15)  # theta_0 = 1
    torch.testing.assert_close(pe[:, 1], torch.cos(p), rtol=0, atol=1e-15)


def test_is_a_hand_computed_entry_right():
    # d_model = 8, pair i = 1: theta_1 = 10000 ** (-2/8) = 0.1; position 3 -> angle 0.3
    pe = S.sinusoidal_positional_encoding(4, 8, dtype=torch.float64)
    assert pe[3, 2].item() == pytest.approx(math.sin(0.3), abs=1e-15)
    assert pe[3, 3].item() == pytest.approx(math.cos(0.3), abs=1e-15)
    # pair i = 3: theta_3 = 10000 ** (-6/8) = 0.001
    assert pe[3, 6].item() == pytest.approx(math.sin(0.003), abs=1e-15)
    assert pe[3, 7].item() == pytest.approx(math.cos(0.003), abs=1e-15)


def test_does_every_entry_follow_the_formula():
    n, d, base = 13, 6, 500.0
    pe = S.sinusoidal_positional_encoding(n, d, base=base, dtype=torch.float64)
    for p in range(n):
        for i in range(d // 2):
            angle = p * base ** (-2 * i / d)
            assert pe[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-14)
            assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-14)


def test_is_float32_accurate_for_large_positions():
    """The angles are computed in float64: the float32 table is the float64 one rounded."""
    pe64 = S.sinusoidal_positional_encoding(4096, 64, dtype=torch.float64)
    pe32 = S.sinusoidal_positional_encoding(4096, 64)
    assert pe32.dtype == torch.float32
    assert torch.equal(pe32, pe64.float())
    naive = torch.arange(4096, dtype=torch.float32)[:, None] * 10000.0 ** (-torch.arange(0, 64, 2) / 64)
    assert (naive.sin() - pe64[:, 0::2]).abs().max() > 1e-4  # what float32 angles would have lost


@cpu_and_cuda()
@pytest.mark.parametrize("dtype", DTYPES)
def test_are_dtype_and_device_those_asked_for(dtype, device):
    pe = S.sinusoidal_positional_encoding(9, 12, device=device, dtype=dtype)
    assert pe.dtype == dtype and pe.device.type == device
    expected = S.sinusoidal_positional_encoding(9, 12, dtype=torch.float64)
    torch.testing.assert_close(pe.cpu().double(), expected, **TOL[dtype])


def test_are_pairs_on_the_unit_circle_and_shifts_rotations():
    """sin^2 + cos^2 = 1 per pair, and PE[p + k] is PE[p] rotated pair by pair by k * theta_i."""
    d, k = 16, 5
    pe = S.sinusoidal_positional_encoding(40, d, dtype=torch.float64)
    pairs = pe.view(40, d // 2, 2)
    torch.testing.assert_close(pairs.pow(2).sum(-1), torch.ones(40, d // 2, dtype=torch.float64))
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    c, s = torch.cos(k * theta), torch.sin(k * theta)
    sin_p, cos_p = pairs[:-k, :, 0], pairs[:-k, :, 1]
    shifted = torch.stack((sin_p * c + cos_p * s, cos_p * c - sin_p * s), dim=-1)  # sin(a+b), cos(a+b)
    torch.testing.assert_close(shifted, pairs[k:], **TOL[torch.float64])


@pytest.mark.parametrize("d_model", [1, 3, 7])
def test_does_an_odd_d_model_raise(d_model):
    with pytest.raises(ValueError, match="even"):
        S.sinusoidal_positional_encoding(4, d_model)


# --- apply_rope -----------------------------------------------------------------------------------------


def rope_by_complex_numbers(x, positions, base=10000.0):
    """RoPE as a product with unit complex numbers e^{i p theta}, in float64."""
    d = x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = positions.double()[..., None] * theta  # (..., n, d/2)
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(z * torch.polar(torch.ones_like(angles), angles)).flatten(-2)


@pytest.mark.parametrize("shape", [(6, 4), (2, 5, 8), (2, 3, 7, 16), (1, 2)])
def test_does_rope_equal_the_complex_formulation(shape):
    x = randn(0, *shape)
    n = shape[-2]
    torch.testing.assert_close(S.apply_rope(x), rope_by_complex_numbers(x, torch.arange(n)), **TOL[torch.float64])
    torch.testing.assert_close(S.apply_rope(x, base=100.0), rope_by_complex_numbers(x, torch.arange(n), 100.0),
                               **TOL[torch.float64])


def test_is_the_first_pair_rotated_by_p_radians():
    x = torch.zeros(4, 6, dtype=torch.float64)
    x[:, 0] = 1.0  # the unit vector along feature 0 at every position
    out = S.apply_rope(x)
    p = torch.arange(4, dtype=torch.float64)
    torch.testing.assert_close(out[:, 0], torch.cos(p))
    torch.testing.assert_close(out[:, 1], torch.sin(p))  # counter-clockwise: (cos, sin)
    assert out[:, 2:].abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_does_rope_preserve_norms_pair_by_pair(dtype):
    x = randn(1, 3, 9, 12, dtype=dtype)
    out = S.apply_rope(x, torch.arange(100, 109))
    norms = x.unflatten(-1, (6, 2)).norm(dim=-1)
    torch.testing.assert_close(out.unflatten(-1, (6, 2)).norm(dim=-1), norms, **TOL[dtype])


def test_is_position_zero_the_identity_and_none_the_arange():
    x = randn(2, 2, 6, 8)
    torch.testing.assert_close(S.apply_rope(x[:, :1]), x[:, :1], rtol=0, atol=0)
    torch.testing.assert_close(S.apply_rope(x, torch.zeros(6, dtype=torch.long)), x, rtol=0, atol=0)
    assert torch.equal(S.apply_rope(x), S.apply_rope(x, torch.arange(6)))


@pytest.mark.parametrize("d", [2, 8, 64])
def test_does_the_score_depend_only_on_the_distance(d):
    """q at position m, k at position n: apply_rope(q, m) . apply_rope(k, n) is a function of m - n only."""
    q, k = randn(3, d), randn(4, d)
    rows = []
    for shift in (0, 1, 7, 100, 5000):
        m = torch.arange(10) + shift  # query positions
        n = torch.arange(10).flip(0) + shift  # key positions: m - n = -9, -7, ..., 9
        qs = S.apply_rope(q.expand(10, d), m)
        ks = S.apply_rope(k.expand(10, d), n)
        rows.append((qs * ks).sum(-1))  # (10,): one score per distance m - n
    for other in rows[1:]:
        torch.testing.assert_close(other, rows[0], rtol=0, atol=1e-10)
    assert float((rows[0] - rows[0][0]).abs().max()) > 1e-3  # it does depend on the distance
    # and at distance 0 the score is the plain dot product
    same = (S.apply_rope(q[None], torch.tensor([42])) * S.apply_rope(k[None], torch.tensor([42]))).sum()
    torch.testing.assert_close(same, q @ k, rtol=0, atol=1e-10)


def test_do_positions_broadcast_over_batch_dimensions():
    x = randn(5, 2, 3, 4, 6)  # (b, h, n, d)
    pos = torch.tensor([[3, 4, 5, 6], [10, 20, 30, 40]])[:, None, :]  # (b, 1, n)
    out = S.apply_rope(x, pos)
    assert out.shape == x.shape
    for b in range(2):
        torch.testing.assert_close(out[b], S.apply_rope(x[b], pos[b, 0]), rtol=0, atol=0)
    torch.testing.assert_close(S.apply_rope(x, torch.arange(4)[None, None]), S.apply_rope(x), rtol=0, atol=0)
    torch.testing.assert_close(S.apply_rope(x[0, 0, 2:], torch.tensor([2, 3])), S.apply_rope(x[0, 0])[2:],
                               rtol=0, atol=0)  # a KV-cache continuation


def test_do_positions_that_do_not_broadcast_raise():
    with pytest.raises(RuntimeError):
        S.apply_rope(randn(0, 2, 4, 6), torch.arange(5))
    with pytest.raises(RuntimeError):
        S.apply_rope(randn(0, 4, 6), torch.zeros(3, 4, dtype=torch.long))  # would add a batch dimension


@cpu_and_cuda()
@pytest.mark.parametrize("dtype", DTYPES)
def test_are_shape_dtype_and_device_preserved(dtype, device):
    x = randn(6, 2, 5, 8, dtype=dtype, device=device)
    pos = torch.arange(5, device=device) + 3
    out = S.apply_rope(x, pos)
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    expected = rope_by_complex_numbers(x.cpu(), pos.cpu())
    torch.testing.assert_close(out.cpu().double(), expected, **TOL[dtype])


def test_is_half_precision_rotated_in_float32():
    x = randn(7, 3, 16, 32, dtype=torch.bfloat16)
    pos = torch.arange(16) + 200
    expected = S.apply_rope(x.float(), pos).bfloat16()
    assert torch.equal(S.apply_rope(x, pos), expected)


def test_does_the_input_stay_unchanged():
    x = randn(8, 4, 6)
    before = x.clone()
    S.apply_rope(x, torch.arange(4) + 1)
    assert torch.equal(x, before)


@pytest.mark.parametrize("d", [1, 5])
def test_does_an_odd_feature_size_raise(d):
    with pytest.raises(ValueError, match="even"):
        S.apply_rope(torch.zeros(3, d))


def test_do_sinusoidal_pairs_and_rope_rotate_alike():
    """The sinusoidal pair (sin, cos) at position p is RoPE applied to (0, 1) at position p."""
    d = 10
    unit = torch.tensor([0.0, 1.0] * (d // 2), dtype=torch.float64).expand(12, d)
    torch.testing.assert_close(S.apply_rope(unit), -S.sinusoidal_positional_encoding(12, d, dtype=torch.float64)
                               * torch.tensor([1.0, -1.0] * (d // 2), dtype=torch.float64))
