"""Lesson 2, scaled dot-product attention: projecting queries, keys and values, then attending.
Their cases, their items and their known mistakes.
"""

from __future__ import annotations

from typing import Any

import torch

import solutions
from exercises.cases import (
    BUILTIN_MHA,
    BUILTIN_SDPA,
    QUERY_FEATURE_DIMS,
    QUERY_KEY_DIMS,
    Case,
    Item,
    call,
    gradient_case,
    rand,
    rows_sum_to_one,
    tensor_arg,
)
from exercises.mistake_core import attend
from exercises.mistakes import mistake

NOTEBOOK = "02_scaled_dot_product_attention.ipynb"


# --- cases ----------------------------------------------------------------------------------------------


def _project(gen, dtype):
    cases = []
    for shape, dk, dv in [((6, 3), 2, 2), ((2, 5, 4), 3, 6), ((1, 8), 8, 1)]:
        d_in = shape[-1]
        inputs = {"x": rand(gen, *shape, dtype=dtype), "wq": rand(gen, d_in, dk, dtype=dtype),
                  "wk": rand(gen, d_in, dk, dtype=dtype), "wv": rand(gen, d_in, dv, dtype=dtype)}
        cases.append(Case(f"x{'x'.join(map(str, shape))}_dk{dk}_dv{dv}",
                          call("project_qkv", tensor_arg("x"), tensor_arg("wq"), tensor_arg("wk"), tensor_arg("wv")),
                          inputs, {f"out.{i}": QUERY_FEATURE_DIMS for i in range(3)}))
    return cases


def _sdpa(gen, dtype):
    def sdpa_case(name, batch, nq, nk, dk, dv, mask=None):
        inputs = {"q": rand(gen, *batch, nq, dk, dtype=dtype), "k": rand(gen, *batch, nk, dk, dtype=dtype),
                  "v": rand(gen, *batch, nk, dv, dtype=dtype)}
        args = [tensor_arg("q"), tensor_arg("k"), tensor_arg("v")]
        if mask is not None:
            inputs["mask"] = mask
            args.append(tensor_arg("mask"))
        dims = {"out.0": ("batch",) * len(batch) + QUERY_FEATURE_DIMS,
                "out.1": ("batch",) * len(batch) + QUERY_KEY_DIMS}
        return Case(name, call("scaled_dot_product_attention", *args), inputs, dims, (rows_sum_to_one("out.1"),))

    random_mask = torch.rand(2, 5, 7, generator=gen) > 0.4
    random_mask[..., 0] = True  # every query keeps at least one key
    return [
        sdpa_case("no_mask", (), 6, 6, 4, 4),
        sdpa_case("nq_ne_nk_dk_ne_dv", (3,), 4, 9, 8, 5),
        sdpa_case("batched_heads", (2, 3), 5, 5, 16, 16),
        sdpa_case("random_mask", (2,), 5, 7, 4, 3, random_mask),
        sdpa_case("broadcast_mask", (2, 3), 4, 6, 8, 8, torch.rand(6, generator=gen) > -1),
        sdpa_case("causal_mask", (2,), 6, 6, 4, 4, torch.ones(6, 6, dtype=torch.bool).tril()),
        sdpa_case("single_token", (), 1, 1, 3, 2),
    ] + ([gradient_case("gradients", [], "scaled_dot_product_attention", ["q", "k", "v"],
                        {"q": rand(gen, 2, 4, 5, dtype=dtype), "k": rand(gen, 2, 6, 5, dtype=dtype),
                         "v": rand(gen, 2, 6, 3, dtype=dtype)}, (2, 4, 3), gen, dtype)]
         if dtype == torch.float64 else [])


ITEMS: list[Item] = [
    Item("project_qkv", NOTEBOOK, _project),
    Item("scaled_dot_product_attention", NOTEBOOK, _sdpa, forbidden=BUILTIN_SDPA + BUILTIN_MHA),
]


# --- known mistakes -------------------------------------------------------------------------------------


def _sdpa_variant(**knobs: Any):
    def scaled_dot_product_attention(q, k, v, mask=None):
        kw = dict(knobs)
        if callable(kw.get("scale")):
            kw["scale"] = kw["scale"](q, k, v)
        return attend(q, k, v, None if kw.pop("ignore_mask", False) else mask, **kw)
    return {"scaled_dot_product_attention": scaled_dot_product_attention}


@mistake("project_qkv", "query_key_swapped",
         "the query and key projections are swapped (queries use W_k, keys use W_q)",
         "queries = x @ W_q, keys = x @ W_k, values = x @ W_v")
def _project_swapped():
    return {"project_qkv": lambda x, W_q, W_k, W_v: solutions.project_qkv(x, W_k, W_q, W_v)}


@mistake("project_qkv", "values_from_key_weights",
         "the values are projected with W_k instead of W_v",
         "values = x @ W_v")
def _project_values_wk():
    return {"project_qkv": lambda x, W_q, W_k, W_v: solutions.project_qkv(x, W_q, W_k, W_k)}


@mistake("scaled_dot_product_attention", "no_sqrt_dk_scaling",
         "the scores are not divided by sqrt(d_k)",
         "divide q @ k^T by k.shape[-1] ** 0.5 before the softmax")
def _sdpa_no_scale():
    return _sdpa_variant(scale=1.0)


@mistake("scaled_dot_product_attention", "scaled_by_d_k",
         "the scores are divided by d_k instead of sqrt(d_k)",
         "divide by k.shape[-1] ** 0.5")
def _sdpa_dk():
    return _sdpa_variant(scale=lambda q, k, v: k.shape[-1])


@mistake("scaled_dot_product_attention", "scaled_by_d_v",
         "the scores are divided by sqrt(d_v), the value size, instead of sqrt(d_k), the key size",
         "use k.shape[-1] (or q.shape[-1]), not v.shape[-1]")
def _sdpa_dv():
    return _sdpa_variant(scale=lambda q, k, v: v.shape[-1] ** 0.5)


@mistake("scaled_dot_product_attention", "softmax_over_queries",
         "the softmax runs over the queries (dim=-2): columns sum to 1 instead of rows",
         "normalise over the keys: softmax(..., dim=-1)")
def _sdpa_dim():
    return _sdpa_variant(dim=-2)


@mistake("scaled_dot_product_attention", "scores_transposed",
         "the scores are k @ q^T (the transpose of q @ k^T; the same as swapping the query and key arguments)",
         "compute q @ k.transpose(-2, -1): row i holds query i's scores against every key")
def _sdpa_scores_t():
    return _sdpa_variant(swap=True)


@mistake("scaled_dot_product_attention", "weights_transposed_before_values",
         "the weights are transposed before the product with the values",
         "the output is weights @ v, with weights of shape (..., n_q, n_k)")
def _sdpa_weights_t():
    return _sdpa_variant(transpose_weights=True)


@mistake("scaled_dot_product_attention", "mask_inverted",
         "the mask convention is inverted: positions where the mask is True are hidden, but True means "
         "'may attend'",
         "hide where the mask is False: scores.masked_fill(~mask, float('-inf'))")
def _sdpa_mask_inverted():
    return _sdpa_variant(invert=True)


@mistake("scaled_dot_product_attention", "masked_with_zero",
         "masked scores are set to 0 instead of -inf, so masked keys still get weight exp(0)",
         "fill with float('-inf') so the softmax gives them exactly 0")
def _sdpa_mask_zero():
    return _sdpa_variant(fill=0.0)


@mistake("scaled_dot_product_attention", "masked_after_softmax",
         "the weights are masked after the softmax without renormalising, so rows no longer sum to 1",
         "mask the scores with -inf before the softmax")
def _sdpa_mask_after():
    return _sdpa_variant(after=True)


@mistake("scaled_dot_product_attention", "mask_ignored",
         "the mask argument is ignored: every query attends to every key",
         "when mask is not None, fill the scores where ~mask with -inf before the softmax")
def _sdpa_mask_ignored():
    return _sdpa_variant(ignore_mask=True)
