"""Lesson 7: training a tiny self-attention model on a toy task and drawing its attention."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TOY_VOCAB = ("the", "cat", "sat", "on", "mat")
"""The toy vocabulary; each word gets one seeded random embedding."""

TOY_SENTENCE = ("the", "cat", "sat", "on", "the", "mat")
"""The toy token sequence (``"the"`` appears twice, with the same embedding)."""

TOY_D_MODEL = 8
"""Embedding size of the toy data set."""


class ToySelfAttention(nn.Module):
    """A tiny (non-causal) self-attention layer with an output projection.

    Attributes:
        W_query, W_key, W_value: ``nn.Linear(d_model, d_model, bias=False)``.
        out_proj: ``nn.Linear(d_model, d_model)``.
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.W_query = nn.Linear(d_model, d_model, bias=False)
        self.W_key = nn.Linear(d_model, d_model, bias=False)
        self.W_value = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(b, n, d) -> (output (b, n, d), weights (b, n, n))``."""
        queries = self.W_query(x)  # (b, n, d)
        keys = self.W_key(x)  # (b, n, d)
        values = self.W_value(x)  # (b, n, d)
        attn_scores = queries @ keys.transpose(-2, -1)  # (b, n, n)
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)  # (b, n, n)
        output = self.out_proj(attn_weights @ values)  # (b, n, d)
        return output, attn_weights


def toy_dataset(
    seed: int = 0, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """A self-supervised toy task: reconstruct each token's embedding from the sequence.

    Each word of :data:`TOY_VOCAB` gets a random ``TOY_D_MODEL``-dimensional embedding drawn from a
    CPU generator seeded with ``seed`` (so the data are the same on every device).

    Returns:
        ``(tokens, inputs, targets)``: the words of :data:`TOY_SENTENCE`, ``(1, n, d)`` embeddings
        and ``targets = inputs.clone()``.
    """
    generator = torch.Generator().manual_seed(seed)
    embedding = torch.randn(len(TOY_VOCAB), TOY_D_MODEL, generator=generator)  # (vocab, d)
    ids = torch.tensor([TOY_VOCAB.index(word) for word in TOY_SENTENCE])  # (n,)
    inputs = embedding[ids].unsqueeze(0).to(device=device, dtype=dtype)  # (1, n, d)
    return list(TOY_SENTENCE), inputs, inputs.clone()


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
