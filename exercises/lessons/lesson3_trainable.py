"""Lesson 3, trainable self-attention: ``SelfAttention_v1`` (parameters), ``SelfAttention_v2`` (``nn.Linear``)
and copying weights from one to the other. Their cases, their items and their known mistakes.
"""

from __future__ import annotations

from typing import Any

import torch

import solutions
from exercises.cases import (
    BUILTIN_MHA,
    BUILTIN_SDPA,
    QUERY_FEATURE_DIMS,
    Case,
    Item,
    build_module,
    forward,
    literal_arg,
    module_cases,
    module_invariants,
    rand,
    reference_params,
    tensor_arg,
    var_arg,
)
from exercises.mistake_core import QKV_BIAS_NOT_USED, attend, scale_for
from exercises.mistakes import error_hint, mistake

NOTEBOOK = "03_trainable_self_attention.ipynb"


# --- cases ----------------------------------------------------------------------------------------------


def _sa_v1(gen, dtype):
    return module_cases("SelfAttention_v1", [
        ("book_3_to_2", {"d_in": 3, "d_out": 2}, (6, 3)),
        ("batched_4_to_5", {"d_in": 4, "d_out": 5}, (2, 7, 4)),
    ], gen, dtype)


def _sa_v2(gen, dtype):
    return module_cases("SelfAttention_v2", [
        ("book_3_to_2", {"d_in": 3, "d_out": 2}, (6, 3)),
        ("batched_4_to_5", {"d_in": 4, "d_out": 5}, (2, 7, 4)),
        ("qkv_bias", {"d_in": 6, "d_out": 4, "qkv_bias": True}, (3, 5, 6)),
    ], gen, dtype) + module_invariants("SelfAttention_v2", {"d_in": 4, "d_out": 3}, gen, dtype, permutation=True)


def _transfer(gen, dtype):
    cases = []
    # d_in == d_out: a copy without the transpose fits, so only the values show it
    for d_in, d_out, shape in [(3, 2, (6, 3)), (5, 4, (2, 4, 5)), (4, 4, (2, 5, 4))]:
        params = reference_params("SelfAttention_v2", {"d_in": d_in, "d_out": d_out}, gen, dtype)
        program = build_module("SelfAttention_v2", {"d_in": d_in, "d_out": d_out}, params, var="v2") + [
            {"op": "seed", "value": 1234},
            {"op": "new", "cls": "SelfAttention_v1", "kwargs": {"d_in": literal_arg(d_in), "d_out": literal_arg(d_out)},
             "out": "v1"},
            {"op": "mode", "obj": "v1", "train": False},
            {"op": "call", "fn": "transfer_weights", "args": [var_arg("v2"), var_arg("v1")], "out": "ignored"},
            {"op": "params", "obj": "v1", "out": "v1_params"},
            {"op": "output", "key": "v1_params", "var": "v1_params"},
        ] + forward("v1", tensor_arg("x"), out="v1_out")
        cases.append(Case(f"{d_in}_to_{d_out}", program, {**params, "x": rand(gen, *shape, dtype=dtype)},
                          {"v1_out": QUERY_FEATURE_DIMS}))
    return cases


ITEMS: list[Item] = [
    Item("SelfAttention_v1", NOTEBOOK, _sa_v1, forbidden=BUILTIN_SDPA + BUILTIN_MHA),
    Item("SelfAttention_v2", NOTEBOOK, _sa_v2, forbidden=BUILTIN_SDPA + BUILTIN_MHA),
    Item("transfer_weights", NOTEBOOK, _transfer, depends_on=("SelfAttention_v1", "SelfAttention_v2")),
]


# --- known mistakes -------------------------------------------------------------------------------------


def _self_attention_v1_variant(**knobs: Any):
    class SelfAttention_v1(solutions.SelfAttention_v1):
        def forward(self, x):
            kw = dict(knobs, scale=scale_for(knobs.get("scale"), x, self))
            return attend(x @ self.W_query, x @ self.W_key, x @ self.W_value, **kw)[0]
    return {"SelfAttention_v1": SelfAttention_v1}


def _self_attention_v2_variant(ignore_bias: bool = False, **knobs: Any):
    class SelfAttention_v2(solutions.SelfAttention_v2):
        def forward(self, x):
            if ignore_bias:
                q, k, v = (x @ lin.weight.T for lin in (self.W_query, self.W_key, self.W_value))
            else:
                q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)
            return attend(q, k, v, **knobs)[0]
    return {"SelfAttention_v2": SelfAttention_v2}


@mistake("SelfAttention_v1", "no_scaling",
         "the scores are not divided by sqrt(d_out) (the key size)",
         "softmax(scores / keys.shape[-1] ** 0.5, dim=-1)")
def _v1_no_scale():
    return _self_attention_v1_variant(scale=1.0)


@mistake("SelfAttention_v1", "scaled_by_d_in",
         "the scores are divided by sqrt(d_in), the input size, instead of sqrt(d_out), the key size",
         "use keys.shape[-1] ** 0.5")
def _v1_d_in():
    return _self_attention_v1_variant(scale="d_in")


@mistake("SelfAttention_v1", "query_key_swapped",
         "the query and key projections are swapped (the same as transposing the scores)",
         "queries = x @ self.W_query, keys = x @ self.W_key, scores = queries @ keys^T")
def _v1_swapped():
    return _self_attention_v1_variant(swap=True)


@mistake("SelfAttention_v2", "qkv_bias_ignored",
         "the biases of the nn.Linear layers are ignored (x @ layer.weight.T drops them), so qkv_bias=True "
         "has no effect",
         "call the layers: self.W_query(x), self.W_key(x), self.W_value(x)")
def _v2_bias():
    return _self_attention_v2_variant(ignore_bias=True)


@mistake("SelfAttention_v2", "no_scaling",
         "the scores are not divided by sqrt(d_out) (the key size)",
         "softmax(scores / keys.shape[-1] ** 0.5, dim=-1)")
def _v2_no_scale():
    return _self_attention_v2_variant(scale=1.0)


@mistake("SelfAttention_v2", "softmax_over_queries",
         "the softmax runs over the queries (dim=-2) instead of the keys",
         "softmax(..., dim=-1)")
def _v2_dim():
    return _self_attention_v2_variant(dim=-2)


error_hint("SelfAttention_v2", "qkv_bias_not_passed", QKV_BIAS_NOT_USED,
           "the layers have no bias even when qkv_bias=True: the argument is not passed on to nn.Linear",
           "nn.Linear(d_in, d_out, bias=qkv_bias) for each of W_query, W_key and W_value")


def _transfer_variant(pairs: dict[str, str], how: str = "transpose"):
    """Copy ``sa_v2``'s weights: ``transpose`` (right), ``reshape`` or ``as_is`` (raises unless d_in == d_out)."""
    def transfer_weights(sa_v2, sa_v1):
        with torch.no_grad():
            for dst, src in pairs.items():
                w = getattr(sa_v2, src).weight
                getattr(sa_v1, dst).copy_({"transpose": w.T, "reshape": w.reshape(w.shape[::-1]), "as_is": w}[how])
    return {"transfer_weights": transfer_weights}


QKV = {"W_query": "W_query", "W_key": "W_key", "W_value": "W_value"}


@mistake("transfer_weights", "copied_without_transpose",
         "the weights are copied without the transpose: nn.Linear stores (d_out, d_in) and SelfAttention_v1 "
         "needs (d_in, d_out); when d_in == d_out the copy fits, but every projection is transposed",
         "copy sa_v2.W_query.weight.T (and the same for W_key and W_value)")
def _transfer_as_is():
    return _transfer_variant(QKV, how="as_is")


@mistake("transfer_weights", "reshaped_instead_of_transposed",
         "the (d_out, d_in) weights are reshaped to (d_in, d_out) instead of transposed, which scrambles them",
         "nn.Linear computes x @ weight.T: copy weight.T")
def _transfer_reshape():
    return _transfer_variant(QKV, how="reshape")


@mistake("transfer_weights", "query_key_swapped",
         "the query and key weights are copied into each other's places",
         "copy W_query into W_query, W_key into W_key, W_value into W_value")
def _transfer_swapped():
    return _transfer_variant({"W_query": "W_key", "W_key": "W_query", "W_value": "W_value"})


@mistake("transfer_weights", "value_weights_not_copied",
         "W_value is not copied, so sa_v1 keeps its own random value weights",
         "copy all three: W_query, W_key and W_value")
def _transfer_no_value():
    return _transfer_variant({"W_query": "W_query", "W_key": "W_key"})


error_hint("transfer_weights", "copied_without_transpose",
           r"size of tensor a \(\d+\) must match|shapes cannot be multiplied|must match the size",
           "the weights were copied without the transpose: nn.Linear stores (d_out, d_in), SelfAttention_v1 "
           "needs (d_in, d_out)",
           "copy sa_v2.W_query.weight.T (and the same for W_key and W_value)")
