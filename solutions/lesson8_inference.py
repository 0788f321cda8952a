"""Lesson 8, generating fast and long: a KV cache with a rolling window and attention sinks, grouped-query
attention (GQA, and MQA as its one-group case), padding masks for batches of prompts of different lengths,
a softmax that survives fully masked rows, and the memory a cache holds.
"""

from __future__ import annotations

import torch
from torch import nn


class KVCache:
    """The keys and values of the positions seen so far, for one attention layer.

    ``append(k, v)`` with ``k, v (b, h, n_new, d)`` stores them and returns every kept key and value,
    ``(b, h, n_kept, d)``. ``len(cache)`` counts every position appended so far; ``positions()`` gives the
    absolute positions (int64, ``(n_kept,)``) of the kept entries. With ``window``, at most ``window``
    positions are kept: the first ``sinks`` ever appended (StreamingLLM's attention sinks) and the most
    recent ``window - sinks`` (a rolling buffer, as in Mistral).
    """

    def __init__(self, window: int | None = None, sinks: int = 0):
        if window is not None and not 0 <= sinks <= window:
            raise ValueError(f"sinks ({sinks}) must be between 0 and window ({window})")
        if sinks < 0:
            raise ValueError(f"sinks must be >= 0, got {sinks}")
        self.window = window
        self.sinks = sinks
        self.keys: torch.Tensor | None = None  # (b, h, n_kept, d)
        self.values: torch.Tensor | None = None  # (b, h, n_kept, d)
        self.kept_positions = torch.zeros(0, dtype=torch.int64)  # (n_kept,)
        self.num_appended = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v (b, h, n_new, d)``; return every kept key and value ``(b, h, n_kept, d)``."""
        n_new = k.shape[-2]
        new_positions = torch.arange(self.num_appended, self.num_appended + n_new, device=k.device)
        if self.keys is None:
            keys, values, positions = k, v, new_positions
        else:
            keys = torch.cat([self.keys, k], dim=-2)  # (b, h, n_kept + n_new, d)
            values = torch.cat([self.values, v], dim=-2)
            positions = torch.cat([self.kept_positions.to(k.device), new_positions])
        self.num_appended += n_new
        if self.window is not None and positions.numel() > self.window:
            # The oldest entries are the sinks (never evicted), then the rest in order: keep the sinks and
            # the most recent window - sinks.
            recent = self.window - self.sinks
            keep = torch.cat([torch.arange(self.sinks, device=k.device),
                              torch.arange(positions.numel() - recent, positions.numel(), device=k.device)])
            keys, values, positions = keys[..., keep, :], values[..., keep, :], positions[keep]
        self.keys, self.values, self.kept_positions = keys, values, positions
        return keys, values

    def __len__(self) -> int:
        return self.num_appended

    def positions(self) -> torch.Tensor:
        """The absolute positions of the kept entries, int64 ``(n_kept,)``, in the order they are kept."""
        return self.kept_positions


def safe_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension (the keys) where ``mask`` is True; zeros for a row with no allowed key.

    ``mask`` is boolean and broadcastable to ``scores``. No built-in softmax; no NaN even where every key
    of a row is masked (a padded query), and stable for large scores.
    """
    masked = scores.masked_fill(~mask, float("-inf"))
    row_max = masked.amax(dim=-1, keepdim=True)  # -inf on a fully masked row
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    exp = torch.exp(masked - row_max) * mask  # exactly 0 where masked
    total = exp.sum(dim=-1, keepdim=True)
    return exp / torch.where(total > 0, total, torch.ones_like(total))


def padding_mask(lengths: torch.Tensor, num_tokens: int, device=None) -> torch.Tensor:
    """``(b, num_tokens)`` boolean, True where the position is ``< lengths[b]`` (right padding)."""
    lengths = torch.as_tensor(lengths, device=device)
    positions = torch.arange(num_tokens, device=lengths.device)  # (num_tokens,)
    return positions[None, :] < lengths[:, None]  # (b, num_tokens)


class GroupedQueryAttention(nn.Module):
    """Causal attention where groups of query heads share one key/value head (Ainslie et al., 2023).

    ``num_kv_groups == num_heads`` is multi-head attention (lesson 5's ``MultiHeadAttention`` with the same
    weights); ``num_kv_groups == 1`` is multi-query attention (Shazeer, 2019). Query head ``h`` uses
    key/value group ``h // (num_heads // num_kv_groups)``.

    Attributes: ``W_query (d_in -> d_out)``, ``W_key`` and ``W_value`` (``d_in -> num_kv_groups * head_dim``),
    ``out_proj (d_out -> d_out)``, ``dropout`` on the attention weights, ``mask`` (causal, boolean buffer).
    ``forward(x, cache=None)``: with a ``KVCache``, ``x`` holds only the new tokens; they attend to every
    cached position and to each other causally, and the cache is extended.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float, num_heads: int,
                 num_kv_groups: int, qkv_bias: bool = False):
        super().__init__()
        if d_out % num_heads != 0:
            raise ValueError(f"d_out ({d_out}) must be divisible by num_heads ({num_heads})")
        if num_heads % num_kv_groups != 0:
            raise ValueError(f"num_heads ({num_heads}) must be divisible by num_kv_groups ({num_kv_groups})")
        self.d_out = d_out
        self.num_heads = num_heads
        self.num_kv_groups = num_kv_groups
        self.head_dim = d_out // num_heads
        self.group_size = num_heads // num_kv_groups
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, num_kv_groups * self.head_dim, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, num_kv_groups * self.head_dim, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", torch.ones(context_length, context_length, dtype=torch.bool).tril())

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """``(b, n_new, d_in) -> (b, n_new, d_out)``; with ``cache``, the new tokens follow the cached ones."""
        b, n_new, _ = x.shape
        queries = self.W_query(x).view(b, n_new, self.num_heads, self.head_dim).transpose(1, 2)  # (b, h, n, hd)
        keys = self.W_key(x).view(b, n_new, self.num_kv_groups, self.head_dim).transpose(1, 2)  # (b, g, n, hd)
        values = self.W_value(x).view(b, n_new, self.num_kv_groups, self.head_dim).transpose(1, 2)
        if cache is None:
            may_attend = self.mask[:n_new, :n_new]  # (n, n)
        else:
            start = len(cache)  # the absolute position of the first new token
            keys, values = cache.append(keys, values)  # (b, g, n_kept, hd): only the groups are stored
            query_positions = torch.arange(start, start + n_new, device=x.device)  # (n_new,)
            key_positions = cache.positions().to(x.device)  # (n_kept,)
            may_attend = key_positions[None, :] <= query_positions[:, None]  # (n_new, n_kept)
        # Query head h reads group h // group_size: repeat each group group_size times, in place.
        keys = keys.repeat_interleave(self.group_size, dim=1)  # (b, h, n_kept, hd)
        values = values.repeat_interleave(self.group_size, dim=1)
        scores = queries @ keys.transpose(-2, -1) / self.head_dim ** 0.5  # (b, h, n_new, n_kept)
        weights = self.dropout(safe_softmax(scores, may_attend))
        context = (weights @ values).transpose(1, 2).reshape(b, n_new, self.d_out)  # (b, n_new, d_out)
        return self.out_proj(context)


def kv_cache_bytes(num_layers: int, num_kv_heads: int, head_dim: int, num_tokens: int, batch_size: int = 1,
                   bytes_per_value: int = 2) -> int:
    """The memory of the keys and values a cache holds, in bytes (a Python int): K and V, every layer."""
    return 2 * num_layers * num_kv_heads * head_dim * num_tokens * batch_size * bytes_per_value
