"""Lesson 2: scaled dot-product attention with queries, keys and values."""

from __future__ import annotations

import torch


def project_qkv(
    x: torch.Tensor, W_q: torch.Tensor, W_k: torch.Tensor, W_v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project token embeddings to queries, keys and values.

    Args:
        x: ``(..., n, d_in)`` token embeddings.
        W_q: ``(d_in, d_k)`` query weights.
        W_k: ``(d_in, d_k)`` key weights.
        W_v: ``(d_in, d_v)`` value weights.

    Returns:
        ``(queries (..., n, d_k), keys (..., n, d_k), values (..., n, d_v))``.
    """
    queries = x @ W_q  # (..., n, d_k)
    keys = x @ W_k  # (..., n, d_k)
    values = x @ W_v  # (..., n, d_v)
    return queries, keys, values


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention, ``softmax(q k^T / sqrt(d_k)) v``.

    Args:
        q: ``(..., n_q, d_k)`` queries.
        k: ``(..., n_k, d_k)`` keys.
        v: ``(..., n_k, d_v)`` values.
        mask: optional boolean mask broadcastable to ``(..., n_q, n_k)``; ``True`` where a query
            may attend to a key (the convention of ``torch.nn.functional.scaled_dot_product_attention``).

    Returns:
        ``(output (..., n_q, d_v), weights (..., n_q, n_k))``.

    Raises:
        TypeError: if ``mask`` is not boolean.
    """
    d_k = k.shape[-1]
    attn_scores = q @ k.transpose(-2, -1)  # (..., n_q, n_k)
    attn_scores = attn_scores / d_k**0.5
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be boolean (True = may attend), got {mask.dtype}")
        attn_scores = attn_scores.masked_fill(~mask, float("-inf"))
    attn_weights = torch.softmax(attn_scores, dim=-1)  # (..., n_q, n_k)
    output = attn_weights @ v  # (..., n_q, d_v)
    return output, attn_weights
