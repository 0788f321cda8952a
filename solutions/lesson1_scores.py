"""Lesson 1: attention scores, softmax and context vectors (no trainable weights).

Follows section 3.3 of Raschka, *Build a Large Language Model (From Scratch)*: every token of
"Your journey starts with one step" attends to every other token through plain dot products.
"""

from __future__ import annotations

import torch

BOOK_TOKENS = ("Your", "journey", "starts", "with", "one", "step")
"""The six tokens of the book's running example (a tuple, so nobody can change it by accident)."""

BOOK_INPUTS = torch.tensor(
    [
        [0.43, 0.15, 0.89],  # Your     (x^1)
        [0.55, 0.87, 0.66],  # journey  (x^2)
        [0.57, 0.85, 0.64],  # starts   (x^3)
        [0.22, 0.58, 0.33],  # with     (x^4)
        [0.77, 0.25, 0.10],  # one      (x^5)
        [0.05, 0.80, 0.55],  # step     (x^6)
    ],
    dtype=torch.float32,
)
"""The book's ``(6, 3)`` float32 embeddings of :data:`BOOK_TOKENS`."""


def attention_scores_loop(inputs: torch.Tensor) -> torch.Tensor:
    """Pairwise dot products of the rows of ``inputs``, computed with explicit Python loops.

    Args:
        inputs: ``(n, d)`` token embeddings.

    Returns:
        ``(n, n)`` scores, ``scores[i, j] = inputs[i] . inputs[j]``, same dtype and device as ``inputs``.
    """
    n = inputs.shape[0]
    attn_scores = torch.empty(n, n, dtype=inputs.dtype, device=inputs.device)  # (n, n)
    for i, x_i in enumerate(inputs):
        for j, x_j in enumerate(inputs):
            attn_scores[i, j] = torch.dot(x_i, x_j)
    return attn_scores


def attention_scores(inputs: torch.Tensor) -> torch.Tensor:
    """Pairwise dot products of the tokens with one matrix product.

    Args:
        inputs: ``(..., n, d)`` token embeddings.

    Returns:
        ``(..., n, n)`` scores ``inputs @ inputs^T``.
    """
    return inputs @ inputs.transpose(-2, -1)  # (..., n, n)


def softmax_naive(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax as written in the textbook formula, ``exp(x) / sum(exp(x))``.

    Overflows for large inputs (``exp(1000)`` is ``inf`` and ``inf / inf`` is NaN); see
    :func:`softmax_stable`.
    """
    exp_x = torch.exp(x)
    return exp_x / exp_x.sum(dim=dim, keepdim=True)


def softmax_stable(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Numerically stable softmax along ``dim``, without calling any built-in softmax.

    Subtracting the maximum of each slice leaves the result unchanged (the factor ``exp(-max)``
    cancels) but makes the largest exponent ``exp(0) = 1``, so nothing overflows. Entries equal
    to ``-inf`` (masked positions) get weight 0 as long as the slice is not entirely ``-inf``.
    """
    x_max = x.amax(dim=dim, keepdim=True)  # (..., 1, ...) along dim
    exp_x = torch.exp(x - x_max)
    return exp_x / exp_x.sum(dim=dim, keepdim=True)


def context_vectors(weights: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Context vectors: each token's attention-weighted sum of all input vectors.

    Args:
        weights: ``(..., n, n)`` attention weights, rows summing to 1.
        inputs: ``(..., n, d)`` token embeddings.

    Returns:
        ``(..., n, d)`` context vectors ``weights @ inputs``.
    """
    return weights @ inputs  # (..., n, d)


def simple_self_attention(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The book's simplified self-attention: scores, softmax weights, context vectors.

    Args:
        inputs: ``(..., n, d)`` token embeddings.

    Returns:
        ``(context, weights)``: ``(..., n, d)`` context vectors and ``(..., n, n)`` weights.
    """
    attn_scores = attention_scores(inputs)  # (..., n, n)
    attn_weights = torch.softmax(attn_scores, dim=-1)  # (..., n, n)
    context = context_vectors(attn_weights, inputs)  # (..., n, d)
    return context, attn_weights
