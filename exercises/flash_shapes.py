"""What lessons 9 and 10 (FlashAttention forward, then backward) grade on alike: the tile shapes of their
cases, their inputs, the "no (n_q, n_k) tensor" limit of the large cases, and the built-ins they forbid.

A lesson never imports another lesson; both FlashAttention lessons import this module (which imports only
``exercises.cases``), so that their cases keep the same shapes.
"""

from __future__ import annotations

import torch

from exercises.cases import BUILTIN_MHA, BUILTIN_SDPA, BUILTIN_SOFTMAX, literal_arg, rand

NO_BUILTIN_ATTENTION = BUILTIN_SOFTMAX + BUILTIN_SDPA + BUILTIN_MHA
LARGE_N = 192  # the large cases: n_q = n_k = 192, d = 8, one sequence, tiles of at most 48

# (name, batch, n_q, n_k, d, d_v, block_q, block_k, causal): the FlashAttention items' shapes
FLASH_SHAPES = [
    ("tiles_divide_n", (2,), 16, 16, 8, 8, 4, 4, False),
    ("tiles_do_not_divide_n", (2,), 10, 10, 4, 6, 3, 4, False),
    ("causal", (2, 2), 12, 12, 8, 8, 5, 3, True),
    ("causal_tiles_of_1", (1,), 6, 6, 4, 4, 1, 1, True),
    ("nq_ne_nk", (3,), 5, 11, 4, 2, 2, 4, False),
    ("causal_nq_lt_nk", (2,), 5, 11, 4, 3, 2, 3, True),  # top-left: query i sees keys j <= i
    ("causal_nq_gt_nk", (2,), 9, 4, 4, 3, 2, 2, True),
    ("tiles_larger_than_n", (), 7, 7, 4, 4, 64, 64, True),
    ("single_token", (), 1, 1, 3, 3, 2, 2, False),
    ("large_no_score_matrix", (1,), LARGE_N, LARGE_N, 8, 8, 48, 32, False),
    ("large_causal_no_score_matrix", (1,), LARGE_N, LARGE_N, 8, 8, 32, 48, True),
]


def qkv(gen, batch, nq, nk, d, dv, dtype) -> dict[str, torch.Tensor]:
    """Fresh ``q (batch, nq, d)``, ``k (batch, nk, d)``, ``v (batch, nk, dv)`` from ``gen``."""
    return {"q": rand(gen, *batch, nq, d, dtype=dtype), "k": rand(gen, *batch, nk, d, dtype=dtype),
            "v": rand(gen, *batch, nk, dv, dtype=dtype)}


def limit(name: str, nq: int, nk: int) -> int | None:
    """The large cases allow no tensor of ``n_q * n_k`` elements (a score matrix); the others, any."""
    return nq * nk - 1 if name.startswith("large") else None


def settings(causal: bool, block_q: int, block_k: int) -> dict[str, dict]:
    """The keyword arguments ``causal, block_q, block_k`` of a call step."""
    return {"causal": literal_arg(causal), "block_q": literal_arg(block_q), "block_k": literal_arg(block_k)}
