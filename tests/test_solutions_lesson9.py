"""Lesson 9 reference: sliding-window masks, online-softmax (tiled) attention, FlashAttention's forward pass
(with lse, causal tiles skipped, and a sliding window whose out-of-reach key tiles are skipped)."""

import math

import pytest
import torch
import torch.nn.functional as F
from flash_helpers import FLASH_BLOCKS, LOOSE, SHAPE_IDS, SHAPES, TOL, NumelRecorder, exact_attention, qkv
from tensor_helpers import DEVICES
from torch.overrides import TorchFunctionMode

import solutions as S

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
BLOCK_SIZES = [1, 3, 7, 64, 1000]

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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_does_the_flash_forward_equal_exact_attention_and_its_logsumexp(shape, causal, dtype, device):
    batch, n_q, n_k, d, d_v = shape
    gen = torch.Generator().manual_seed(1)
    q, k, v = qkv(gen, batch, n_q, n_k, d, d_v, dtype, device)
    expected, expected_lse = exact_attention(q, k, v, causal)
    torch.testing.assert_close(expected, F.scaled_dot_product_attention(q, k, v, is_causal=causal), **TOL[dtype])
    for block_q, block_k in FLASH_BLOCKS:
        out, lse = S.flash_attention_forward(q, k, v, causal=causal, block_q=block_q, block_k=block_k)
        assert out.shape == (*batch, n_q, d_v) and lse.shape == (*batch, n_q)
        assert out.dtype == lse.dtype == dtype and out.device.type == lse.device.type == torch.device(device).type
        torch.testing.assert_close(out, expected, **TOL[dtype])
        torch.testing.assert_close(lse, expected_lse, **TOL[dtype])




# --- FlashAttention's forward pass with a sliding window --------------------------------------------------

# n_q <= n_k: with n_q > n_k and a narrow window, the last queries would see no key at all
WINDOW_SHAPES = [((), 1, 1, 2, 2), ((2,), 13, 13, 8, 4), ((2, 3), 10, 17, 4, 6), ((2,), 16, 16, 5, 5)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("window", [1, 2, 5, 16, 100])
@pytest.mark.parametrize("shape", WINDOW_SHAPES, ids=["-".join(map(str, (*s[0], *s[1:]))) for s in WINDOW_SHAPES])
def test_does_the_windowed_flash_forward_equal_exact_windowed_attention(shape, window, dtype, device):
    batch, n_q, n_k, d, d_v = shape
    gen = torch.Generator().manual_seed(10)
    q, k, v = qkv(gen, batch, n_q, n_k, d, d_v, dtype, device)
    expected, expected_lse = exact_attention(q, k, v, True, window)
    visible = S.sliding_window_mask(max(n_q, n_k), window, device=device)[:n_q, :n_k]
    torch.testing.assert_close(expected, F.scaled_dot_product_attention(q, k, v, attn_mask=visible), **TOL[dtype])
    for block_q, block_k in FLASH_BLOCKS:
        for causal in (False, True):  # a window implies causal
            out, lse = S.flash_attention_forward(q, k, v, causal, block_q, block_k, window_size=window)
            torch.testing.assert_close(out, expected, **TOL[dtype])
            torch.testing.assert_close(lse, expected_lse, **TOL[dtype])


def test_does_a_window_wider_than_the_sequence_equal_causal_attention():
    gen = torch.Generator().manual_seed(11)
    q, k, v = qkv(gen, (2,), 12, 12, 4, 4, torch.float64, "cpu")
    for window in (12, 13, 1000):
        for got, want in zip(S.flash_attention_forward(q, k, v, False, 4, 3, window_size=window),
                             S.flash_attention_forward(q, k, v, True, 4, 3), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


class MatmulCounter(TorchFunctionMode):
    """Counts the matrix products a function makes (two per key tile visited: q k^T and p v)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__):
            self.count += 1
        return func(*args, **(kwargs or {}))


def tiles_in_reach(n, block_q, block_k, window):
    """The (query tile, key tile) pairs holding at least one pair 0 <= i - j < window."""
    return sum(any(0 <= i - j < window for i in range(qs, min(qs + block_q, n))
                   for j in range(ks, min(ks + block_k, n)))
               for qs in range(0, n, block_q) for ks in range(0, n, block_k))


@pytest.mark.parametrize(("n", "block_q", "block_k", "window"), [(64, 8, 8, 8), (60, 8, 5, 11), (40, 4, 16, 3)])
def test_are_key_tiles_out_of_the_window_skipped_not_masked(n, block_q, block_k, window):
    gen = torch.Generator().manual_seed(12)
    q, k, v = qkv(gen, (), n, n, 4, 4, torch.float64, "cpu")
    with MatmulCounter() as windowed:
        S.flash_attention_forward(q, k, v, True, block_q, block_k, window_size=window)
    with MatmulCounter() as causal:
        S.flash_attention_forward(q, k, v, True, block_q, block_k)
    assert windowed.count == 2 * tiles_in_reach(n, block_q, block_k, window)
    assert windowed.count < causal.count  # the window does less work than causal masking alone


@pytest.mark.parametrize("window", [0, -3])
def test_does_the_flash_forward_refuse_an_empty_window(window):
    q = torch.zeros(4, 2)
    with pytest.raises(ValueError):
        S.flash_attention_forward(q, q, q, window_size=window)


def test_does_the_windowed_forward_build_no_n_q_by_n_k_tensor():
    gen = torch.Generator().manual_seed(13)
    q, k, v = qkv(gen, (2,), 48, 48, 8, 8, torch.float64, "cpu")
    with NumelRecorder() as probe:
        S.flash_attention_forward(q, k, v, False, 12, 10, window_size=7)
    assert 0 < probe.largest[0] < 48 * 48, probe.largest


@pytest.mark.parametrize("device", DEVICES)
def test_is_a_half_precision_forward_accumulated_in_float32(device):
    gen = torch.Generator().manual_seed(7)
    q, k, v = qkv(gen, (2,), 9, 11, 8, 4, torch.bfloat16, device)
    for window in (None, 3):
        out, lse = S.flash_attention_forward(q, k, v, True, 4, 4, window_size=window)
        assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
        expected, expected_lse = exact_attention(q.double(), k.double(), v.double(), True, window)
        torch.testing.assert_close(out.double(), expected, **LOOSE)
        torch.testing.assert_close(lse.double(), expected_lse, rtol=1e-5, atol=1e-5)  # inputs exact in float32
