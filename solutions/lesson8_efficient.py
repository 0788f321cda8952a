"""Lesson 8: efficient attention, with sliding-window masks and tiled (online-softmax) attention."""

from __future__ import annotations

import torch


def sliding_window_mask(num_tokens: int, window_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Causal, local ``(n, n)`` boolean mask: query ``i`` may attend key ``j`` iff ``0 <= i - j < window``.

    ``window`` is ``window_size``, the number of most recent tokens (itself included) a query sees.

    ``window_size >= n`` gives the ordinary causal mask; ``window_size == 1`` lets each token see
    only itself.

    Raises:
        ValueError: if ``window_size < 1``.
    """
    if window_size < 1:
        raise ValueError(f"window_size must be at least 1, got {window_size}")
    positions = torch.arange(num_tokens, device=device)  # (n,)
    distance = positions[:, None] - positions[None, :]  # (n, n), i - j
    return (distance >= 0) & (distance < window_size)  # (n, n)


def online_softmax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int = 64, causal: bool = False
) -> torch.Tensor:
    """Exact attention ``softmax(q k^T / sqrt(d)) v``, computed one block of keys at a time.

    The idea behind FlashAttention: for each query keep a running maximum ``m``, a running
    softmax denominator ``l`` and an unnormalised output ``acc``. When a new block raises the
    maximum from ``m_old`` to ``m_new``, the old ``l`` and ``acc`` are rescaled by
    ``exp(m_old - m_new)``. Only one ``(..., n_q, block_size)`` block of scores exists at a time.

    Args:
        q: ``(..., n_q, d)`` queries.
        k: ``(..., n_k, d)`` keys.
        v: ``(..., n_k, d_v)`` values.
        block_size: number of keys per block.
        causal: if ``True``, query ``i`` attends key ``j`` only when ``j <= i`` (top-left
            alignment, like ``scaled_dot_product_attention(..., is_causal=True)``).

    Returns:
        ``(..., n_q, d_v)`` output in the dtype of ``q``. Half-precision inputs are accumulated
        in float32.

    Raises:
        ValueError: if ``block_size < 1``.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    n_q, d = q.shape[-2:]
    n_k, d_v = v.shape[-2:]
    batch_shape = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    out_dtype = q.dtype
    acc_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    scale = 1.0 / d**0.5

    q = q.to(acc_dtype)
    m = torch.full((*batch_shape, n_q, 1), float("-inf"), dtype=acc_dtype, device=q.device)  # (..., n_q, 1)
    l = torch.zeros((*batch_shape, n_q, 1), dtype=acc_dtype, device=q.device)  # (..., n_q, 1)
    acc = torch.zeros((*batch_shape, n_q, d_v), dtype=acc_dtype, device=q.device)  # (..., n_q, d_v)
    query_pos = torch.arange(n_q, device=q.device)[:, None]  # (n_q, 1)

    for start in range(0, n_k, block_size):
        if causal and start >= n_q:
            break  # every later key comes after every query
        end = min(start + block_size, n_k)
        k_blk = k[..., start:end, :].to(acc_dtype)  # (..., B, d)
        v_blk = v[..., start:end, :].to(acc_dtype)  # (..., B, d_v)
        scores = (q @ k_blk.transpose(-2, -1)) * scale  # (..., n_q, B)
        if causal:
            key_pos = torch.arange(start, end, device=q.device)[None, :]  # (1, B)
            scores = scores.masked_fill(key_pos > query_pos, float("-inf"))

        m_new = torch.maximum(m, scores.amax(dim=-1, keepdim=True))  # (..., n_q, 1)
        # A row whose keys so far are all masked has m_new = -inf; use 0 there so that
        # exp(-inf - 0) = 0 instead of exp(-inf - (-inf)) = NaN.
        m_safe = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)
        p = torch.exp(scores - m_safe)  # (..., n_q, B) unnormalised weights
        rescale = torch.exp(m - m_safe)  # (..., n_q, 1) exp(m_old - m_new)
        l = rescale * l + p.sum(dim=-1, keepdim=True)
        acc = rescale * acc + p @ v_blk  # (..., n_q, d_v)
        m = m_new

    return (acc / l).to(out_dtype)  # (..., n_q, d_v)
