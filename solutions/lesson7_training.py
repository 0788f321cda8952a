"""Lesson 7: training a tiny self-attention model on a toy task and drawing its attention."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TOY_SENTENCE = ("the", "cat", "sat", "on", "the", "mat")
"""The toy sentence (``"the"`` appears twice, with the same embedding)."""

TOY_VOCAB = ("the", "cat", "sat", "on", "mat")
"""The toy vocabulary; each word gets one seeded random embedding."""

TOY_D_MODEL = 8
"""Embedding size of the toy data set."""

TOY_NUM_SENTENCES = 16
"""Sentences in the toy data set: the toy sentence, then seeded random sequences of its words."""

TOY_MAX_TOKENS = 16
"""The longest sequence :class:`ToySelfAttention` has a position embedding for."""


class ToySelfAttention(nn.Module):
    """A tiny (non-causal) self-attention layer with learned positions and an output projection.

    Positions enter the queries and keys only (where to look); the values carry the tokens
    themselves (what to take), as with RoPE.

    Attributes:
        pos_emb: ``nn.Embedding(TOY_MAX_TOKENS, d_model)``, one learned vector per position.
        W_query, W_key, W_value: ``nn.Linear(d_model, d_model, bias=False)``.
        out_proj: ``nn.Linear(d_model, d_model)``.
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.pos_emb = nn.Embedding(TOY_MAX_TOKENS, d_model)
        self.W_query = nn.Linear(d_model, d_model, bias=False)
        self.W_key = nn.Linear(d_model, d_model, bias=False)
        self.W_value = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(b, n, d) -> (output (b, n, d), weights (b, n, n))``."""
        n = x.shape[-2]
        where = x + self.pos_emb(torch.arange(n, device=x.device))  # (b, n, d): token + its position
        queries = self.W_query(where)  # (b, n, d)
        keys = self.W_key(where)  # (b, n, d)
        values = self.W_value(x)  # (b, n, d): the tokens alone
        attn_scores = queries @ keys.transpose(-2, -1)  # (b, n, n)
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)  # (b, n, n)
        output = self.out_proj(attn_weights @ values)  # (b, n, d)
        return output, attn_weights


def toy_sentences(seed: int = 0) -> list[list[str]]:
    """:data:`TOY_SENTENCE`, then ``TOY_NUM_SENTENCES - 1`` seeded random sequences of words of :data:`TOY_VOCAB`.

    In random sequences a word does not tell which word came before it (in the toy sentence alone,
    ``"sat"`` always follows ``"cat"``): only the word *at the previous position* does.
    """
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, len(TOY_VOCAB), (TOY_NUM_SENTENCES - 1, len(TOY_SENTENCE)), generator=generator)
    return [list(TOY_SENTENCE)] + [[TOY_VOCAB[i] for i in row] for row in ids.tolist()]


def toy_dataset(
    seed: int = 0, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> tuple[list[list[str]], torch.Tensor, torch.Tensor]:
    """The previous-token task: each position's target is the embedding of the token before it.

    Each word of :data:`TOY_VOCAB` gets a random ``TOY_D_MODEL``-dimensional embedding drawn from a
    CPU generator seeded with ``seed`` (so the data are the same on every device); the sentences are
    :func:`toy_sentences` of the same seed. Position 0 has no previous token: its target is its own
    embedding.

    Returns:
        ``(sentences, inputs, targets)``: the words, ``(b, n, d)`` embeddings, and ``(b, n, d)``
        targets with ``targets[:, i] = inputs[:, i - 1]`` for ``i >= 1`` and ``targets[:, 0] = inputs[:, 0]``.
    """
    generator = torch.Generator().manual_seed(seed)
    embedding = torch.randn(len(TOY_VOCAB), TOY_D_MODEL, generator=generator)  # (vocab, d)
    sentences = toy_sentences(seed)
    ids = torch.tensor([[TOY_VOCAB.index(word) for word in s] for s in sentences])  # (b, n)
    inputs = embedding[ids]  # (b, n, d)
    targets = torch.cat([inputs[:, :1], inputs[:, :-1]], dim=1)  # (b, n, d): the previous token
    return sentences, inputs.to(device=device, dtype=dtype), targets.to(device=device, dtype=dtype)


def previous_token_fraction(weights: torch.Tensor) -> float:
    """The fraction of rows ``i >= 1`` of ``(..., n, n)`` attention weights whose largest weight is on key ``i - 1``."""
    n = weights.shape[-1]
    best = weights[..., 1:, :].argmax(dim=-1)  # (..., n - 1)
    return float((best == torch.arange(n - 1, device=weights.device)).double().mean())


def train_self_attention(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, steps: int, lr: float
) -> list[float]:
    """Train ``model`` with Adam and a mean-squared-error loss; return the per-step losses.

    ``model(inputs)`` may return the output tensor or a tuple whose first element is the output
    (like :class:`ToySelfAttention`, which also returns its weights). Each loss is recorded
    *before* that step's parameter update, so ``losses[0]`` is the loss of the untrained model.

    Returns:
        ``list[float]`` of length ``steps``.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses: list[float] = []
    for _ in range(steps):
        optimizer.zero_grad()
        output = model(inputs)
        if isinstance(output, tuple | list):
            output = output[0]
        loss = F.mse_loss(output, targets)
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
    return losses


def plot_attention(weights: torch.Tensor, tokens: Sequence[str]) -> Figure:
    """Heatmap of ``(n, n)`` attention weights, queries as rows and keys as columns.

    Uses ``matplotlib.figure.Figure`` directly, so no GUI backend (and no pyplot state) is needed.

    Args:
        weights: ``(n, n)`` attention weights (any dtype or device).
        tokens: the ``n`` token strings, used as tick labels on both axes.

    Returns:
        The ``matplotlib.figure.Figure``.

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
    ax.set_xticks(range(n))
    ax.set_xticklabels(labels, rotation=45, ha="right")
    ax.set_yticks(range(n))
    ax.set_yticklabels(labels)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    ax.set_title("Attention weights")
    return fig
