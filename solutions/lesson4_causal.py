"""Lesson 4: causal (masked) attention, with dropout on the attention weights."""

from __future__ import annotations

import torch
from torch import nn


def causal_mask(num_tokens: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(n, n)`` boolean mask, ``True`` on and below the diagonal (query ``i`` may attend key ``j <= i``)."""
    return torch.ones(num_tokens, num_tokens, dtype=torch.bool, device=device).tril()  # (n, n)


def causal_attention_weights(scores: torch.Tensor) -> torch.Tensor:
    """Causal attention weights from attention scores: no query attends to a later key.

    No scaling is applied here: pass scores that are already scaled (e.g. divided by
    ``sqrt(d_k)``) if you want scaled attention.

    Args:
        scores: ``(..., n, n)`` attention scores.

    Returns:
        ``(..., n, n)`` weights, zero above the diagonal, each row summing to 1.
    """
    n_q, n_k = scores.shape[-2:]
    mask = torch.ones(n_q, n_k, dtype=torch.bool, device=scores.device).tril()  # (n, n), True = may attend
    masked = scores.masked_fill(~mask, float("-inf"))  # (..., n, n)
    return torch.softmax(masked, dim=-1)


class CausalAttention(nn.Module):
    """Single-head causal self-attention with dropout on the attention weights (book section 3.5).

    Attributes:
        W_query, W_key, W_value: ``nn.Linear(d_in, d_out, bias=qkv_bias)``.
        dropout: ``nn.Dropout(dropout)`` applied to the attention weights.
        mask: ``(context_length, context_length)`` boolean buffer, ``True`` = may attend.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float, qkv_bias: bool = False):
        super().__init__()
        self.d_out = d_out
        self.context_length = context_length
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", causal_mask(context_length))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, n, d_in) -> (b, n, d_out)``, for any ``n <= context_length``."""
        b, num_tokens, d_in = x.shape
        if num_tokens > self.context_length:
            raise ValueError(f"{num_tokens} tokens exceed context_length={self.context_length}")
        keys = self.W_key(x)  # (b, n, d_out)
        queries = self.W_query(x)  # (b, n, d_out)
        values = self.W_value(x)  # (b, n, d_out)
        attn_scores = queries @ keys.transpose(1, 2)  # (b, n, n)
        mask = self.mask[:num_tokens, :num_tokens]  # (n, n)
        attn_scores = attn_scores.masked_fill(~mask, float("-inf"))
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)  # (b, n, n)
        attn_weights = self.dropout(attn_weights)
        return attn_weights @ values  # (b, n, d_out)
