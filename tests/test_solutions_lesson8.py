"""Lesson 8 reference: sliding-window masks and online-softmax (tiled) attention."""

import math

import pytest
import torch
import torch.nn.functional as F
from tensor_helpers import DEVICES, randn
from torch.overrides import TorchFunctionMode

import solutions as S

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}
LOOSE = dict(rtol=5e-2, atol=5e-2)
BLOCK_SIZES = [1, 3, 7, 64, 1000]

# (batch dims, n_q, n_k, d, d_v)
SHAPES = [
    ((), 1, 1, 1, 1),
    ((), 6, 6, 3, 3),
    ((2,), 13, 13, 8, 4),
    ((2, 3), 10, 17, 4, 6),
    ((2,), 17, 10, 5, 5),
    ((3,), 1, 9, 2, 3),
]
SHAPE_IDS = ["-".join(map(str, (*b, nq, nk, d, dv))) for b, nq, nk, d, dv in SHAPES]


def qkv(gen, batch, n_q, n_k, d, d_v, dtype, device, scale=1.0):
    return (
        randn(gen, *batch, n_q, d, dtype=dtype, device=device, scale=scale),
        randn(gen, *batch, n_k, d, dtype=dtype, device=device, scale=scale),
        randn(gen, *batch, n_k, d_v, dtype=dtype, device=device),
    )


# --- sliding_window_mask ------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [1, 2, 7])
@pytest.mark.parametrize("window", [1, 2, 3, 7, 10])
def test_is_the_sliding_window_mask_causal_and_local(n, window, device):
    mask = S.sliding_window_mask(n, window, device=device)
    assert mask.shape == (n, n) and mask.dtype == torch.bool
    assert mask.device.type == torch.device(device).type
    for i in range(n):
        for j in range(n):
            assert bool(mask[i, j]) == (0 <= i - j < window), (i, j)
    assert mask.diagonal().all()  # every token sees itself
    assert torch.equal(mask & ~S.causal_mask(n, device=device), torch.zeros_like(mask))


@pytest.mark.parametrize("device", DEVICES)
def test_does_a_wide_window_equal_the_causal_mask(device):
    for n in (1, 5, 8):
        for window in (n, n + 1, 100):
            assert torch.equal(S.sliding_window_mask(n, window, device=device), S.causal_mask(n, device=device))
    assert torch.equal(S.sliding_window_mask(5, 1, device=device), torch.eye(5, dtype=torch.bool, device=device))
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(S.sliding_window_mask(4, 2, device=device), expected.to(device))


@pytest.mark.parametrize("window", [0, -1])
def test_does_sliding_window_mask_refuse_empty_windows(window):
    with pytest.raises(ValueError):
        S.sliding_window_mask(4, window)


@pytest.mark.parametrize("device", DEVICES)
def test_is_windowed_attention_blind_outside_the_window(device):
    n, window = 9, 3
    mask = S.sliding_window_mask(n, window, device=device)
    gen = torch.Generator().manual_seed(0)
    q, k, v = qkv(gen, (2,), n, n, 4, 5, torch.float64, device)
    out, weights = S.scaled_dot_product_attention(q, k, v, mask=mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **TOL[torch.float64])
    for j in range(n):  # change token j's key and value: only queries j .. j + window - 1 notice
        k2, v2 = k.clone(), v.clone()
        k2[:, j] += 1.0
        v2[:, j] += 1.0
        out2, _ = S.scaled_dot_product_attention(q, k2, v2, mask=mask)
        changed = ~torch.isclose(out, out2, rtol=0, atol=1e-12).all(-1).all(0)  # (n,)
        expected = torch.tensor([0 <= i - j < window for i in range(n)], device=device)
        assert torch.equal(changed, expected), j


# --- online_softmax_attention -------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_does_online_softmax_equal_exact_attention(shape, causal, dtype, device):
    batch, n_q, n_k, d, d_v = shape
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        q, k, v = qkv(gen, batch, n_q, n_k, d, d_v, dtype, device)
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        for block_size in BLOCK_SIZES:
            out = S.online_softmax_attention(q, k, v, block_size=block_size, causal=causal)
            assert out.shape == (*batch, n_q, d_v)
            torch.testing.assert_close(out, expected, **TOL[dtype], msg=lambda m, b=block_size: f"block {b}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_does_online_softmax_use_the_default_block_of_64(causal, device):
    gen = torch.Generator().manual_seed(0)
    q, k, v = qkv(gen, (2,), 150, 150, 8, 8, torch.float64, device)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(S.online_softmax_attention(q, k, v, causal=causal), expected, **TOL[torch.float64])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_does_online_softmax_survive_huge_scores(dtype, device):
    # Scores around +-1e4: a later block raising the maximum must rescale what came before.
    gen = torch.Generator().manual_seed(0)
    q, k, v = qkv(gen, (2,), 8, 20, 4, 3, dtype, device, scale=50.0)
    for causal in (False, True):
        expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal)
        for block_size in (1, 3, 64):
            out = S.online_softmax_attention(q, k, v, block_size=block_size, causal=causal)
            assert torch.isfinite(out).all()
            # float32 scores of size ~1e3 carry absolute rounding of ~1e-4, hence the looser tolerance
            tol = 1e-3 if dtype == torch.float32 else 1e-10
            torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("device", DEVICES)
def test_are_fully_masked_blocks_harmless(device):
    # Causal, one key per block: for query 0 every block after the first is entirely -inf.
    gen = torch.Generator().manual_seed(0)
    q, k, v = qkv(gen, (), 5, 5, 3, 2, torch.float64, device)
    out = S.online_softmax_attention(q, k, v, block_size=1, causal=True)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out[0], v[0])  # the first query sees only the first key
    # More keys than queries, causal: the trailing keys are never seen.
    q, k, v = qkv(gen, (2,), 3, 11, 4, 4, torch.float64, device)
    out = S.online_softmax_attention(q, k, v, block_size=2, causal=True)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), **TOL[torch.float64])


@pytest.mark.parametrize("device", DEVICES)
def test_is_a_block_of_only_minus_inf_scores_harmless(device):
    # Keys at -inf make every score of the first block -inf, so the running maximum is still -inf
    # after it: exp(-inf - (-inf)) would be NaN without the safe maximum. (With top-left causal
    # masking this cannot happen through the mask alone: every query sees key 0.)
    q = torch.tensor([[1.0], [2.0], [0.5]], dtype=torch.float64, device=device)
    k = torch.tensor([[float("-inf")], [float("-inf")], [0.5], [1.0]], dtype=torch.float64, device=device)
    v = torch.tensor([[7.0, 7.0], [9.0, 9.0], [1.0, 2.0], [3.0, 4.0]], dtype=torch.float64, device=device)
    out = S.online_softmax_attention(q, k, v, block_size=2)
    assert not torch.isnan(out).any()
    expected = torch.softmax(q @ k[2:].T, dim=-1) @ v[2:]  # attention over the two finite keys
    torch.testing.assert_close(out, expected, **TOL[torch.float64])


class ShapeRecorder(TorchFunctionMode):
    """Records the shape of every tensor produced by a torch function."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for r in result if isinstance(result, tuple | list) else (result,):
            if isinstance(r, torch.Tensor):
                self.shapes.append(tuple(r.shape))
        return result


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_does_online_softmax_never_build_the_full_score_matrix(causal):
    gen = torch.Generator().manual_seed(0)
    n_q, n_k, block_size = 12, 40, 8
    q, k, v = qkv(gen, (2,), n_q, n_k, 4, 3, torch.float64, "cpu")
    with ShapeRecorder() as recorder:
        out = S.online_softmax_attention(q, k, v, block_size=block_size, causal=causal)
    assert recorder.shapes, "nothing was recorded"
    widest = max(shape[-1] for shape in recorder.shapes if len(shape) >= 2 and shape[-2] == n_q)
    assert widest <= max(block_size, 4, 3), recorder.shapes
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=causal))


def test_does_online_softmax_refuse_empty_blocks():
    q = torch.zeros(2, 3)
    for block_size in (0, -2):
        with pytest.raises(ValueError):
            S.online_softmax_attention(q, q, q, block_size=block_size)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_does_online_softmax_keep_dtype_and_device(causal, dtype, device):
    gen = torch.Generator().manual_seed(0)
    q, k, v = qkv(gen, (2,), 9, 9, 8, 4, dtype, device)
    out = S.online_softmax_attention(q, k, v, block_size=4, causal=causal)
    assert out.dtype == dtype and out.device.type == torch.device(device).type
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal)
    torch.testing.assert_close(out.double(), expected, **(LOOSE if dtype == torch.bfloat16 else TOL[dtype]))


@pytest.mark.parametrize("device", DEVICES)
def test_does_online_softmax_pass_gradients(device):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (t.requires_grad_() for t in qkv(gen, (2,), 6, 7, 3, 2, torch.float64, device))
    S.online_softmax_attention(q, k, v, block_size=3, causal=True).pow(2).sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    F.scaled_dot_product_attention(q, k, v, is_causal=True).pow(2).sum().backward()
    for g, t in zip(grads, (q, k, v), strict=True):
        torch.testing.assert_close(g, t.grad, **TOL[torch.float64])


def test_is_the_scale_one_over_sqrt_d():
    q = torch.tensor([[2.0, 2.0, 2.0, 2.0]], dtype=torch.float64)
    k = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]], dtype=torch.float64)
    v = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    expected = 1.0 / (1.0 + math.exp(16.0 / 2.0))
    out = S.online_softmax_attention(q, k, v, block_size=1)
    assert out.item() == pytest.approx(expected, rel=1e-12)
