"""Lesson 9: efficient attention I: sliding-window masks, the online softmax and FlashAttention's tiled forward pass."""

from __future__ import annotations

import math

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


# --- FlashAttention's forward pass: query and key tiles, logsumexp --------------------------------------


def _check_blocks(block_q: int, block_k: int) -> None:
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block sizes must be at least 1, got block_q={block_q}, block_k={block_k}")


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs, else the inputs' own dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def flash_attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, block_q: int = 64, block_k: int = 64,
    window_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention computed tile by tile (FlashAttention-2's forward pass); returns ``(out, lse)``.

    The queries are cut into tiles of ``block_q`` rows; for each query tile the keys and values are
    visited in tiles of ``block_k`` with a running maximum ``m``, a running sum ``l`` and an
    unnormalised output, rescaled by ``exp(m_old - m_new)`` when the maximum grows. Only one
    ``(..., block_q, block_k)`` tile of scores exists at a time: no tensor of ``n_q * n_k`` elements.

    Args:
        q: ``(..., n_q, d)`` queries; k: ``(..., n_k, d)`` keys; v: ``(..., n_k, d_v)`` values
            (leading dimensions broadcast).
        causal: query ``i`` attends key ``j`` only when ``j <= i`` (top-left aligned, like
            ``scaled_dot_product_attention(..., is_causal=True)``); key tiles that lie entirely after
            every query of a tile are skipped.
        block_q, block_k: rows per query tile, keys per key tile.
        window_size: if given (it implies ``causal``), query ``i`` attends key ``j`` only when
            ``0 <= i - j < window_size`` (a causal sliding window); key tiles that lie wholly before
            the window of every query of a tile are skipped, not masked: ``O(n * window)`` work.

    Returns:
        ``out (..., n_q, d_v)`` in the dtype of ``q``, and ``lse (..., n_q)``, the natural log of
        ``sum_j exp(s_ij)`` over the keys query ``i`` may see, with ``s = q k^T / sqrt(d)`` (float32 for
        half-precision inputs, else the dtype of ``q``). The accumulation runs in that dtype too.
        A query that sees no key (only possible when ``n_k == 0``: top-left causal masking always
        leaves key 0 visible) gets ``out = 0`` and ``lse = -inf``.

    Raises:
        ValueError: if a block size is below 1, or ``window_size`` is below 1.
    """
    _check_blocks(block_q, block_k)
    if window_size is not None and window_size < 1:
        raise ValueError(f"window_size must be at least 1, got {window_size}")
    causal = causal or window_size is not None
    n_q, d = q.shape[-2:]
    n_k, d_v = v.shape[-2:]
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    acc_dtype = _accumulation_dtype(q.dtype)
    scale = 1.0 / math.sqrt(d)
    out = torch.empty((*batch, n_q, d_v), dtype=acc_dtype, device=q.device)  # (..., n_q, d_v)
    lse = torch.empty((*batch, n_q), dtype=acc_dtype, device=q.device)  # (..., n_q)

    for qs in range(0, n_q, block_q):
        qe = min(qs + block_q, n_q)
        q_tile = q[..., qs:qe, :].to(acc_dtype) * scale  # (..., Bq, d), scaled once
        m = torch.full((*batch, qe - qs, 1), float("-inf"), dtype=acc_dtype, device=q.device)  # running max
        l = torch.zeros((*batch, qe - qs, 1), dtype=acc_dtype, device=q.device)  # running sum
        acc = torch.zeros((*batch, qe - qs, d_v), dtype=acc_dtype, device=q.device)  # unnormalised output
        query_pos = torch.arange(qs, qe, device=q.device)[:, None]  # (Bq, 1)
        k_stop = min(n_k, qe) if causal else n_k  # causal: keys from qe on come after every query of the tile
        # window: keys before qs - window_size + 1 are out of reach of every query of the tile; start at the
        # key tile holding the first key in reach (tiles stay aligned to multiples of block_k)
        k_start = 0 if window_size is None else max(0, qs - window_size + 1) // block_k * block_k

        for ks in range(k_start, k_stop, block_k):
            ke = min(ks + block_k, k_stop)
            s = q_tile @ k[..., ks:ke, :].to(acc_dtype).transpose(-2, -1)  # (..., Bq, Bk)
            outside_window = window_size is not None and (qe - 1) - ks >= window_size
            if (causal and ke - 1 > qs) or outside_window:  # some (query, key) pair of the tile is hidden: mask
                key_pos = torch.arange(ks, ke, device=q.device)[None, :]  # (1, Bk)
                hidden = key_pos > query_pos  # (Bq, Bk), later keys
                if window_size is not None:
                    hidden = hidden | (query_pos - key_pos >= window_size)  # keys that fell out of the window
                s = s.masked_fill(hidden, float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))  # (..., Bq, 1)
            m_safe = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)  # no -inf - (-inf)
            p = torch.exp(s - m_safe)  # (..., Bq, Bk)
            correction = torch.exp(m - m_safe)  # (..., Bq, 1)
            l = l * correction + p.sum(dim=-1, keepdim=True)
            acc = acc * correction + p @ v[..., ks:ke, :].to(acc_dtype)  # (..., Bq, d_v)
            m = m_new

        m_safe = torch.where(m == float("-inf"), torch.zeros_like(m), m)
        out[..., qs:qe, :] = acc / torch.where(l == 0, torch.ones_like(l), l)  # a row with no key: 0
        lse[..., qs:qe] = (m_safe + torch.log(l)).squeeze(-1)  # log(l) = -inf where no key

    return out.to(q.dtype), lse


