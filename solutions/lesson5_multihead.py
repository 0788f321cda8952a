"""Lesson 5: multi-head attention, first as a stack of heads, then with split weights (book 3.6)."""

from __future__ import annotations

import torch
from torch import nn

from .lesson4_causal import CausalAttention, causal_mask


class MultiHeadAttentionWrapper(nn.Module):
    """``num_heads`` independent :class:`CausalAttention` heads whose outputs are concatenated.

    Output: ``(b, n, num_heads * d_out)``.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float,
        num_heads: int,
        qkv_bias: bool = False,
    ):
        super().__init__()
        self.heads = nn.ModuleList(
            [CausalAttention(d_in, d_out, context_length, dropout, qkv_bias) for _ in range(num_heads)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, n, d_in) -> (b, n, num_heads * d_out)``."""
        return torch.cat([head(x) for head in self.heads], dim=-1)  # (b, n, h * d_out)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Split the last dimension into heads: ``(b, n, d) -> (b, num_heads, n, d // num_heads)``.

    Raises:
        ValueError: if ``d`` is not divisible by ``num_heads``.
    """
    b, num_tokens, d = x.shape
    if d % num_heads != 0:
        raise ValueError(f"the last dimension ({d}) must be divisible by num_heads ({num_heads})")
    x = x.reshape(b, num_tokens, num_heads, d // num_heads)  # (b, n, h, hd)
    return x.transpose(1, 2)  # (b, h, n, hd)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_heads`: ``(b, h, n, hd) -> (b, n, h * hd)``."""
    b, num_heads, num_tokens, head_dim = x.shape
    x = x.transpose(1, 2)  # (b, n, h, hd)
    return x.contiguous().view(b, num_tokens, num_heads * head_dim)  # (b, n, h * hd)


class MultiHeadAttention(nn.Module):
    """Causal multi-head attention with one projection per role, split into heads (book section 3.6.2).

    Attributes:
        W_query, W_key, W_value: ``nn.Linear(d_in, d_out, bias=qkv_bias)``.
        out_proj: ``nn.Linear(d_out, d_out)`` combining the heads.
        dropout: ``nn.Dropout(dropout)`` on the attention weights.
        mask: ``(context_length, context_length)`` boolean buffer, ``True`` = may attend.

    Raises:
        ValueError: if ``d_out`` is not divisible by ``num_heads``.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float,
        num_heads: int,
        qkv_bias: bool = False,
    ):
        super().__init__()
        if d_out % num_heads != 0:
            raise ValueError(f"d_out ({d_out}) must be divisible by num_heads ({num_heads})")
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.context_length = context_length
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", causal_mask(context_length))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, n, d_in) -> (b, n, d_out)``, for any ``n <= context_length``."""
        b, num_tokens, d_in = x.shape
        if num_tokens > self.context_length:
            raise ValueError(f"{num_tokens} tokens exceed context_length={self.context_length}")
        keys = split_heads(self.W_key(x), self.num_heads)  # (b, h, n, hd)
        queries = split_heads(self.W_query(x), self.num_heads)  # (b, h, n, hd)
        values = split_heads(self.W_value(x), self.num_heads)  # (b, h, n, hd)
        attn_scores = queries @ keys.transpose(2, 3)  # (b, h, n, n)
        mask = self.mask[:num_tokens, :num_tokens]  # (n, n)
        attn_scores = attn_scores.masked_fill(~mask, float("-inf"))
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)  # (b, h, n, n)
        attn_weights = self.dropout(attn_weights)
        context_vec = merge_heads(attn_weights @ values)  # (b, h, n, hd) -> (b, n, d_out)
        return self.out_proj(context_vec)  # (b, n, d_out)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (those with ``requires_grad``) of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
