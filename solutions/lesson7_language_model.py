"""Lesson 7: a tiny causal language model from the student's own parts (the capstone).

The graded pieces are :class:`RotaryMultiHeadAttention` (lesson 5's ``MultiHeadAttention`` with lesson 6's
``apply_rope`` on the queries and keys of every head), :func:`next_token_loss`, :func:`train_language_model`
and :func:`generate`. The model around them (:class:`TinyLanguageModel`), the corpus and the character
tokenizer are given code in the notebook; they live here too so that tests and the lesson's demos agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .lesson5_multihead import MultiHeadAttention, merge_heads, split_heads
from .lesson6_positions import apply_rope

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CORPUS = (
    "your journey starts with one step. "
    "awareness is power in a world where knowledge is everywhere. "
    "the teacher gives the student a book. "
    "the student reads the book. "
    "attention is all you need. "
)
"""The toy corpus: English sentences built on the seed tutorials' examples (the notebook keeps it in one cell)."""


class RotaryMultiHeadAttention(MultiHeadAttention):
    """Lesson 5's causal ``MultiHeadAttention`` with rotary positions on the queries and keys of every head.

    Same attributes as ``MultiHeadAttention`` (``W_query``, ``W_key``, ``W_value``, ``out_proj``, ``mask``,
    ``dropout``) plus ``rope_base``. The rotation is applied after the split into heads, so each head rotates
    its own ``head_dim`` features with the frequencies of ``head_dim``; the values are not rotated.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float, num_heads: int,
                 qkv_bias: bool = False, rope_base: float = 10000.0):
        super().__init__(d_in, d_out, context_length, dropout, num_heads, qkv_bias)
        self.rope_base = rope_base

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """``(b, n, d_in) -> (b, n, d_out)``; ``positions`` as in ``apply_rope`` (default ``0 .. n-1``)."""
        b, num_tokens, d_in = x.shape
        if num_tokens > self.context_length:
            raise ValueError(f"{num_tokens} tokens exceed context_length={self.context_length}")
        queries = split_heads(self.W_query(x), self.num_heads)  # (b, h, n, hd)
        keys = split_heads(self.W_key(x), self.num_heads)  # (b, h, n, hd)
        values = split_heads(self.W_value(x), self.num_heads)  # (b, h, n, hd)
        if positions is not None:
            positions = torch.as_tensor(positions, device=x.device)
            if positions.dim() >= 2:  # (b, n): one row of positions per sequence, the same for every head
                positions = positions.unsqueeze(-2)  # (b, 1, n)
        queries = apply_rope(queries, positions, self.rope_base)  # (b, h, n, hd): rotated by position
        keys = apply_rope(keys, positions, self.rope_base)  # (b, h, n, hd)
        attn_scores = queries @ keys.transpose(2, 3)  # (b, h, n, n): depend on position differences only
        mask = self.mask[:num_tokens, :num_tokens]  # (n, n)
        attn_scores = attn_scores.masked_fill(~mask, float("-inf"))
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)  # (b, h, n, n)
        attn_weights = self.dropout(attn_weights)
        context_vec = merge_heads(attn_weights @ values)  # (b, n, d_out)
        return self.out_proj(context_vec)  # (b, n, d_out)


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting ``tokens[:, t + 1]`` from ``logits[:, t]``, ``t = 0 .. n - 2``.

    Args:
        logits: ``(b, n, V)`` unnormalised scores.
        tokens: ``(b, n)`` int64 token ids.

    Returns:
        A scalar tensor (differentiable with respect to ``logits``).
    """
    vocab = logits.shape[-1]
    predictions = logits[:, :-1, :]  # (b, n-1, V): position t predicts ...
    targets = tokens[:, 1:]  # (b, n-1): ... the token at t + 1
    return F.cross_entropy(predictions.reshape(-1, vocab), targets.reshape(-1))


def train_language_model(model: nn.Module, tokens: torch.Tensor, steps: int, lr: float) -> list[float]:
    """Train ``model`` (``model(tokens)`` returns ``(b, n, V)`` logits) with Adam and :func:`next_token_loss`.

    Each loss is recorded *before* that step's parameter update, so ``losses[0]`` is the loss of the
    untrained model. Returns ``list[float]`` of length ``steps``; the model is trained in place.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses: list[float] = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = next_token_loss(model(tokens), tokens)
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
    return losses


@torch.no_grad()
def generate(model: nn.Module, prompt: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding without a cache: ``prompt (b, n)`` int64 -> ``(b, n + max_new_tokens)``.

    Each step runs the model on everything so far and appends the most likely next token of every
    sequence (the argmax of the logits at the last position).
    """
    tokens = prompt
    for _ in range(max_new_tokens):
        logits = model(tokens)  # (b, t, V)
        next_token = logits[:, -1, :].argmax(dim=-1, keepdim=True)  # (b, 1)
        tokens = torch.cat([tokens, next_token.to(tokens.dtype)], dim=1)  # (b, t + 1)
    return tokens


# --- given code: the model around the graded pieces, the tokenizer, the heatmap ------------------------------


class FeedForward(nn.Module):
    """Position-wise feed-forward layer: ``Linear(d, 4d)``, GELU, ``Linear(4d, d)``."""

    def __init__(self, d_model: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, n, d) -> (b, n, d)``."""
        return self.layers(x)


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))``, then ``x + ff(norm2(x))``.

    ``attention`` is any causal attention module ``(b, n, d) -> (b, n, d)``; a rotary one also takes
    ``positions``.
    """

    def __init__(self, d_model: int, attention: nn.Module):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = attention
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """``(b, n, d) -> (b, n, d)``."""
        h = self.norm1(x)
        x = x + (self.attn(h) if positions is None else self.attn(h, positions))  # (b, n, d)
        return x + self.ff(self.norm2(x))  # (b, n, d)


class TinyLanguageModel(nn.Module):
    """Token embedding, ``num_layers`` blocks, a final norm and the output layer to ``vocab_size`` logits.

    ``positions="rope"``: every block's attention is a :class:`RotaryMultiHeadAttention` and there is no
    position table. ``positions="learned"``: GPT-2's choice, a trained table ``pos_emb`` of
    ``context_length`` vectors added to the token embeddings, and lesson 5's ``MultiHeadAttention``.
    ``forward(tokens)``: ``(b, n)`` int64 -> ``(b, n, vocab_size)`` logits.
    """

    def __init__(self, vocab_size: int, d_model: int, context_length: int, num_heads: int, num_layers: int = 1,
                 positions: str = "rope"):
        super().__init__()
        if positions not in ("rope", "learned"):
            raise ValueError(f"positions must be 'rope' or 'learned', got {positions!r}")
        self.positions = positions
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(context_length, d_model) if positions == "learned" else None
        attention = RotaryMultiHeadAttention if positions == "rope" else MultiHeadAttention
        self.blocks = nn.ModuleList(TransformerBlock(d_model, attention(d_model, d_model, context_length, 0.0,
                                                                        num_heads)) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.out_head = nn.Linear(d_model, vocab_size)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """``(b, n)`` int64 -> ``(b, n, vocab_size)`` logits; ``positions`` (default ``0 .. n-1``) as in
        ``apply_rope`` for a rotary model, the rows of the table for a learned one."""
        x = self.tok_emb(tokens)  # (b, n, d)
        if self.pos_emb is not None:
            where = torch.arange(tokens.shape[1], device=tokens.device) if positions is None else positions
            x = x + self.pos_emb(where)  # (b, n, d): the learned vector of each position
            positions = None  # MultiHeadAttention takes no positions
        for block in self.blocks:
            x = block(x, positions)
        return self.out_head(self.norm(x))  # (b, n, V)


@torch.no_grad()
def attention_weights(model: TinyLanguageModel, tokens: torch.Tensor) -> torch.Tensor:
    """The ``(b, h, n, n)`` attention weights of the first block of ``model`` on ``tokens``.

    Caught on their way into the block's ``dropout`` (a forward hook): the lessons apply ``self.dropout`` to the
    attention weights, so the attention modules need not return them, and no code here spells out attention.

    Raises:
        RuntimeError: if the attention never calls its ``dropout``.
    """
    captured: list[torch.Tensor] = []
    hook = model.blocks[0].attn.dropout.register_forward_hook(lambda module, args, out: captured.append(args[0]))
    try:
        model(tokens)
    finally:
        hook.remove()
    if not captured:
        raise RuntimeError("the attention never called self.dropout on its weights, so they cannot be shown")
    return captured[0]


def character_vocabulary(text: str) -> list[str]:
    """The sorted distinct characters of ``text``: token id ``i`` is character ``vocab[i]``."""
    return sorted(set(text))


def encode(text: str, vocab: Sequence[str]) -> torch.Tensor:
    """``text`` -> ``(len(text),)`` int64 token ids."""
    index = {ch: i for i, ch in enumerate(vocab)}
    return torch.tensor([index[ch] for ch in text], dtype=torch.long)


def decode(ids: torch.Tensor | Sequence[int], vocab: Sequence[str]) -> str:
    """Token ids -> text."""
    return "".join(vocab[int(i)] for i in ids)


def plot_attention(weights: torch.Tensor, tokens: Sequence[str]) -> Figure:
    """Heatmap of ``(n, n)`` attention weights, queries as rows and keys as columns (given code in lesson 7).

    Uses ``matplotlib.figure.Figure`` directly, so no GUI backend (and no pyplot state) is needed.

    Raises:
        ValueError: if ``weights`` is not a square matrix or ``len(tokens) != n``.
    """
    from matplotlib.figure import Figure

    if weights.dim() != 2 or weights.shape[0] != weights.shape[1]:
        raise ValueError(f"weights must be a square (n, n) matrix, got shape {tuple(weights.shape)}")
    n = weights.shape[0]
    if len(tokens) != n:
        raise ValueError(f"got {len(tokens)} tokens for {n}x{n} weights")
    labels = [str(token) for token in tokens]
    fig = Figure(figsize=(1.0 + 0.6 * n, 0.6 + 0.6 * n), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(weights.detach().cpu().float().numpy(), cmap="viridis")
    fig.colorbar(image, ax=ax, label="attention weight")
    ax.set_xticks(range(n), labels=labels)
    ax.set_yticks(range(n), labels=labels)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    return fig
