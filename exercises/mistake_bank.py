"""Known mistakes, lesson by lesson (registered with ``exercises.mistakes.mistake``)."""

from __future__ import annotations

import torch

import solutions
from exercises.mistakes import mistake


@mistake("softmax_stable", "no_max_subtracted",
         "the maximum is not subtracted before exp, so large scores overflow to inf and give NaN",
         "subtract x.amax(dim, keepdim=True) before torch.exp")
def _softmax_no_max():
    return {"softmax_stable": lambda x, dim=-1: torch.exp(x) / torch.exp(x).sum(dim, keepdim=True)}


@mistake("scaled_dot_product_attention", "no_sqrt_dk_scaling",
         "the scores are not divided by sqrt(d_k)",
         "divide q @ k^T by k.shape[-1] ** 0.5 before the softmax")
def _sdpa_no_scale():
    def sdpa(q, k, v, mask=None):
        return solutions.scaled_dot_product_attention(q * k.shape[-1] ** 0.5, k, v, mask)
    return {"scaled_dot_product_attention": sdpa}
