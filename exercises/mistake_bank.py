"""The course's known mistakes, gathered: each lesson module in ``exercises/lessons/`` registers its own.

Importing this module imports every lesson (through ``exercises.catalogue``), so all of them are
registered in ``exercises.mistakes``; ``exercises.diagnosis`` imports it. What stays here is the list of
known mistakes that no case detects. ``docs/CHECKS.md`` (``scripts/mistake_catalogue.py``) lists them all
as students see them.
"""

from __future__ import annotations

from typing import Any

import torch

import solutions
from exercises import catalogue  # noqa: F401 - importing the lessons registers their mistakes
from exercises.mistake_core import attend

# --- known mistakes that no current case detects (listed in docs/CHECKS.md; tests/test_mistake_bank.py
# checks that each really passes every case, so this list cannot go stale silently) --------------------------

UNDETECTED: list[tuple[str, str, str]] = [
    ("CausalAttention", "dropout_mask_shared_across_batch",
     "one (n, n) dropout mask broadcast over the batch: the train-mode case has a single sequence, and each of its "
     "rows is still what dropping attention weights gives"),
    ("MultiHeadAttention", "dropout_mask_shared_across_heads",
     "one (n, n) dropout mask broadcast over the batch and the heads: every row is still what dropping attention "
     "weights gives (the check allows any kept keys per head, identical ones included)"),
    ("causal_mask", "device_ignored",
     "a mask always made on the CPU is only caught where a GPU is present (the device check)"),
    ("sliding_window_mask", "device_ignored",
     "a mask always made on the CPU is only caught where a GPU is present (the device check)"),
]


def undetected_variants() -> dict[tuple[str, str], dict[str, Any]]:
    """Buggy variants for :data:`UNDETECTED`, keyed ``(item, name)`` (the suite checks they pass today)."""
    def shared_dropout(module, n: int):
        if not module.training:
            return None
        keep = torch.rand(n, n, device=module.mask.device) >= module.dropout.p
        return lambda w: w * keep / (1 - module.dropout.p)

    class CausalSharedMask(solutions.CausalAttention):
        def forward(self, x):
            n = x.shape[1]
            q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)
            return attend(q, k, v, self.mask[:n, :n], dropout=shared_dropout(self, n))[0]

    class MultiHeadSharedMask(solutions.MultiHeadAttention):
        def forward(self, x):
            n = x.shape[1]
            q, k, v = (solutions.split_heads(lin(x), self.num_heads)
                       for lin in (self.W_query, self.W_key, self.W_value))
            context = attend(q, k, v, self.mask[:n, :n], dropout=shared_dropout(self, n))[0]
            return self.out_proj(solutions.merge_heads(context))

    def causal_mask_cpu(num_tokens, device=None):
        return solutions.causal_mask(num_tokens)

    def sliding_cpu(num_tokens, window_size, device=None):
        return solutions.sliding_window_mask(num_tokens, window_size)

    return {
        ("CausalAttention", "dropout_mask_shared_across_batch"): {"CausalAttention": CausalSharedMask},
        ("MultiHeadAttention", "dropout_mask_shared_across_heads"): {"MultiHeadAttention": MultiHeadSharedMask},
        ("causal_mask", "device_ignored"): {"causal_mask": causal_mask_cpu},
        ("sliding_window_mask", "device_ignored"): {"sliding_window_mask": sliding_cpu},
    }
