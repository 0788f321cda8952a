"""Lesson 8 reference: sliding-window masks, online-softmax (tiled) attention, FlashAttention forward and backward."""

import math

import pytest
import torch
import torch.nn.functional as F
from tensor_helpers import DEVICES, randn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

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


# --- FlashAttention: forward with lse, backward by recomputation, the autograd Function ----------------

FLASH_BLOCKS = [(1, 1), (3, 5), (4, 4), (7, 2), (64, 64), (1000, 3)]  # (block_q, block_k)


def exact_attention(q, k, v, causal):
    """Attention through its definition (autograd follows it): ``(out, lse)``."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        n_q, n_k = scores.shape[-2:]
        scores = scores.masked_fill(~torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril(), -math.inf)
    return torch.softmax(scores, dim=-1) @ v, torch.logsumexp(scores, dim=-1)


def exact_gradients(q, k, v, causal, grad_out):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out, _ = exact_attention(*leaves, causal)
    return torch.autograd.grad(out, leaves, grad_out)


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


class NumelRecorder(TorchDispatchMode):
    """Records the number of elements of every tensor an operator returns (below autograd: backward too)."""

    def __init__(self):
        super().__init__()
        self.largest = (0, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for r in result if isinstance(result, tuple | list) else (result,):
            if isinstance(r, torch.Tensor) and r.numel() > self.largest[0]:
                self.largest = (r.numel(), f"{func}: {tuple(r.shape)}")
        return result


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
