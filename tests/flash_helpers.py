"""What the tests of lessons 9 and 10 (FlashAttention forward, then backward) share: shapes, inputs,
attention through its definition, and a probe of the largest tensor an operator returns."""

import math

import torch
from tensor_helpers import randn
from torch.utils._python_dispatch import TorchDispatchMode

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}
LOOSE = dict(rtol=5e-2, atol=5e-2)

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
FLASH_BLOCKS = [(1, 1), (3, 5), (4, 4), (7, 2), (64, 64), (1000, 3)]  # (block_q, block_k)


def qkv(gen, batch, n_q, n_k, d, d_v, dtype, device, scale=1.0):
    """Random ``q, k, v`` of the given shapes (``scale`` multiplies q and k: larger scores)."""
    return (
        randn(gen, *batch, n_q, d, dtype=dtype, device=device, scale=scale),
        randn(gen, *batch, n_k, d, dtype=dtype, device=device, scale=scale),
        randn(gen, *batch, n_k, d_v, dtype=dtype, device=device),
    )


def exact_attention(q, k, v, causal, window_size=None):
    """Attention through its definition (autograd follows it): ``(out, lse)``; a window implies causal."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    n_q, n_k = scores.shape[-2:]
    distance = torch.arange(n_q, device=q.device)[:, None] - torch.arange(n_k, device=q.device)[None, :]
    allowed = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device)
    if causal or window_size is not None:
        allowed &= distance >= 0
    if window_size is not None:
        allowed &= distance < window_size
    scores = scores.masked_fill(~allowed, -math.inf)
    return torch.softmax(scores, dim=-1) @ v, torch.logsumexp(scores, dim=-1)


def exact_gradients(q, k, v, causal, grad_out):
    """Autograd's gradients of ``exact_attention`` with respect to ``q, k, v``."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out, _ = exact_attention(*leaves, causal)
    return torch.autograd.grad(out, leaves, grad_out)


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
