"""Lesson 3: self-attention with trainable weights (the book's ``SelfAttention_v1`` and ``_v2``)."""

from __future__ import annotations

import torch
from torch import nn


class SelfAttention_v1(nn.Module):
    """Self-attention with raw ``nn.Parameter`` weight matrices of shape ``(d_in, d_out)``.

    Attributes:
        W_query, W_key, W_value: ``(d_in, d_out)`` parameters, initialised with ``torch.rand``.
    """

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.W_query = nn.Parameter(torch.rand(d_in, d_out))
        self.W_key = nn.Parameter(torch.rand(d_in, d_out))
        self.W_value = nn.Parameter(torch.rand(d_in, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., n, d_in) -> (..., n, d_out)`` context vectors."""
        keys = x @ self.W_key  # (..., n, d_out)
        queries = x @ self.W_query  # (..., n, d_out)
        values = x @ self.W_value  # (..., n, d_out)
        attn_scores = queries @ keys.transpose(-2, -1)  # (..., n, n)
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        return attn_weights @ values  # (..., n, d_out)


class SelfAttention_v2(nn.Module):
    """Self-attention whose projections are ``nn.Linear`` layers (better initialisation, optional bias).

    Attributes:
        W_query, W_key, W_value: ``nn.Linear(d_in, d_out, bias=qkv_bias)``.
    """

    def __init__(self, d_in: int, d_out: int, qkv_bias: bool = False):
        super().__init__()
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., n, d_in) -> (..., n, d_out)`` context vectors."""
        keys = self.W_key(x)  # (..., n, d_out)
        queries = self.W_query(x)  # (..., n, d_out)
        values = self.W_value(x)  # (..., n, d_out)
        attn_scores = queries @ keys.transpose(-2, -1)  # (..., n, n)
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        return attn_weights @ values  # (..., n, d_out)


def transfer_weights(sa_v2: SelfAttention_v2, sa_v1: SelfAttention_v1) -> None:
    """Copy ``sa_v2``'s weights into ``sa_v1`` (in place) so both give the same output.

    ``nn.Linear`` stores its weight as ``(d_out, d_in)`` and computes ``x @ weight.T``, while
    ``SelfAttention_v1`` computes ``x @ W`` with ``W`` of shape ``(d_in, d_out)``: hence the transpose.

    Raises:
        ValueError: if ``sa_v2`` has query/key/value biases, which ``SelfAttention_v1`` cannot hold.
    """
    names = ("W_query", "W_key", "W_value")
    for name in names:
        if getattr(sa_v2, name).bias is not None:
            raise ValueError(f"sa_v2.{name} has a bias (qkv_bias=True); SelfAttention_v1 has no bias to copy it into")
    with torch.no_grad():
        for name in names:
            getattr(sa_v1, name).copy_(getattr(sa_v2, name).weight.T)  # (d_out, d_in) -> (d_in, d_out)
