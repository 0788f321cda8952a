"""Lesson 4, causal attention: the causal mask, masked weights and ``CausalAttention`` (with dropout).
Their cases, their items and their known mistakes.
"""

from __future__ import annotations

from typing import Any

import torch

import solutions
from exercises.cases import (
    BUILTIN_MHA,
    BUILTIN_SDPA,
    DEVICE_ARG,
    DROPOUT_P,
    QUERY_KEY_DIMS,
    Case,
    Check,
    Item,
    call,
    causal_leak_case,
    dropout_case,
    eval_matches,
    literal_arg,
    module_cases,
    module_invariants,
    rand,
    rows_sum_to_one,
    tensor_arg,
)
from exercises.compare import Outputs
from exercises.i18n import tr
from exercises.mistake_core import (
    attend,
    causal_mask_of,
    dropout_never_applied,
    dropout_on_output,
    mask_not_cut_to_sequence_length,
    masked_softmax,
    scale_for,
    weights_dropout,
)
from exercises.mistakes import mistake

NOTEBOOK = "04_causal_attention.ipynb"


# --- cases ----------------------------------------------------------------------------------------------


def _causal_mask(gen, dtype):
    return [Case(f"n{n}", call("causal_mask", literal_arg(n), device=DEVICE_ARG), {}, {"out": QUERY_KEY_DIMS})
            for n in (1, 4, 9)]


def _causal_weights(gen, dtype):
    cases = []
    for shape in [(6, 6), (2, 5, 5), (2, 3, 4, 4), (1, 1)]:
        cases.append(Case("x" + "x".join(map(str, shape)), call("causal_attention_weights", tensor_arg("s")),
                          {"s": rand(gen, *shape, dtype=dtype, scale=2.0)},
                          {"out": ("batch",) * (len(shape) - 2) + QUERY_KEY_DIMS},
                          (rows_sum_to_one("out"), no_future("out"))))
    return cases


def no_future(key: str) -> Check:
    def check(student: Outputs, reference: Outputs) -> str | None:
        w = student.tensor(key)
        if w is None or w.dim() < 2 or w.shape[-1] != w.shape[-2] or not w.is_floating_point():
            return None
        future = torch.ones(w.shape[-2:], dtype=torch.bool).triu(1)
        if bool((w[..., future] != 0).any()):
            i, j = [int(v) for v in future.nonzero()[(w[..., future] != 0).reshape(-1, future.sum())
                                                     .any(0).nonzero()[0, 0]]]
            return tr("query {i} gives weight to the later key {j}: fill the scores above the diagonal with -inf "
                      "before the softmax so their weights are exactly 0").format(i=i, j=j)
        return None
    return check


def _causal_attention(gen, dtype):
    cls = "CausalAttention"
    base = {"d_in": 4, "d_out": 3, "context_length": 8, "dropout": 0.0}
    cases = module_cases(cls, [
        ("n_equals_context", base, (2, 8, 4)),
        ("n_shorter_than_context", base, (2, 5, 4)),
        ("eval_ignores_dropout", {**base, "dropout": 0.5, "qkv_bias": True}, (3, 6, 4)),
        ("single_token", base, (1, 1, 4)),
    ], gen, dtype)
    cases.append(causal_leak_case(cls, base, gen, dtype, 2, 7, 3))
    dropout = dropout_case(cls, {**base, "dropout": DROPOUT_P}, gen, dtype)
    dropout.checks = dropout.checks + (eval_matches("eval_out"),)
    cases.append(dropout)
    return cases + module_invariants(cls, base, gen, dtype)


ITEMS: list[Item] = [
    Item("causal_mask", NOTEBOOK, _causal_mask, dtypes=(None,), gpu_dtypes=()),
    Item("causal_attention_weights", NOTEBOOK, _causal_weights, forbidden=BUILTIN_SDPA),
    Item("CausalAttention", NOTEBOOK, _causal_attention, forbidden=BUILTIN_SDPA + BUILTIN_MHA),
]


# --- known mistakes -------------------------------------------------------------------------------------


def _causal_attention_variant(mask: str = "cut", dropout: str = "right", **knobs: Any):
    class CausalAttention(solutions.CausalAttention):
        def forward(self, x):
            kw = dict(knobs, scale=scale_for(knobs.get("scale"), x, self))
            q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)
            m = causal_mask_of(self, x.shape[1], mask)
            context = attend(q, k, v, m, dropout=weights_dropout(self, dropout), **kw)[0]
            return self.dropout(context) if dropout == "output" else context
    return {"CausalAttention": CausalAttention}


def _mask_variant(diagonal: int = 0, upper: bool = False, dtype: torch.dtype = torch.bool):
    def causal_mask(num_tokens, device=None):
        ones = torch.ones(num_tokens, num_tokens, dtype=dtype, device=device)
        return ones.triu(diagonal) if upper else ones.tril(diagonal)
    return {"causal_mask": causal_mask}


@mistake("causal_mask", "diagonal_hidden",
         "the diagonal is False: a token may not attend to itself (tril(diagonal=-1))",
         "torch.ones(n, n, dtype=torch.bool).tril(): True on and below the diagonal")
def _mask_no_diag():
    return _mask_variant(diagonal=-1)


@mistake("causal_mask", "convention_inverted",
         "the mask is True above the diagonal (the positions to hide), but True means 'may attend'",
         "return the complement: True on and below the diagonal, .tril()")
def _mask_inverted():
    return _mask_variant(diagonal=1, upper=True)


@mistake("causal_mask", "hides_the_past",
         "the mask is True on and above the diagonal: each token attends to the future, not the past",
         "use .tril(), not .triu()")
def _mask_future():
    return _mask_variant(upper=True)


@mistake("causal_mask", "float_mask",
         "the mask is a float tensor of 0s and 1s instead of a boolean tensor",
         "create it with dtype=torch.bool (or call .bool())")
def _mask_float():
    return _mask_variant(dtype=torch.float32)


def _weights_variant(*, diagonal: int = 0, scale: bool = False, **knobs: Any):
    def causal_attention_weights(scores):
        n = scores.shape[-1]
        if scale:
            scores = scores / n ** 0.5
        mask = torch.ones(n, n, dtype=torch.bool, device=scores.device).tril(diagonal)
        return masked_softmax(scores, mask, **knobs)
    return {"causal_attention_weights": causal_attention_weights}


@mistake("causal_attention_weights", "masked_with_zero",
         "future scores are set to 0 instead of -inf, so later keys still get weight",
         "scores.masked_fill(~mask, float('-inf')) before the softmax")
def _weights_zero():
    return _weights_variant(fill=0.0)


@mistake("causal_attention_weights", "masked_after_softmax",
         "the future weights are zeroed after the softmax without renormalising: rows do not sum to 1",
         "mask the scores with -inf before the softmax (or divide each row by its new sum)")
def _weights_after():
    return _weights_variant(after=True)


@mistake("causal_attention_weights", "diagonal_hidden",
         "the mask also hides the diagonal, so the first token has no key at all (NaN) and every token "
         "ignores itself",
         "keep the diagonal: tril() (diagonal=0), or triu(diagonal=1) for the positions to hide")
def _weights_no_diag():
    return _weights_variant(diagonal=-1)


@mistake("causal_attention_weights", "mask_inverted",
         "the mask convention is inverted: the past is hidden and the future kept",
         "hide where the causal mask is False: masked_fill(~mask, -inf) with mask = tril")
def _weights_inverted():
    return _weights_variant(invert=True)


@mistake("causal_attention_weights", "scores_scaled",
         "the scores are divided by sqrt(n): this function gets scores that are already scaled",
         "apply only the mask and the softmax")
def _weights_scaled():
    return _weights_variant(scale=True)


@mistake("CausalAttention", "dropout_active_in_eval",
         "dropout is applied even in eval() mode (F.dropout without training=self.training, or a dropout "
         "that ignores the module's mode)",
         "use self.dropout = nn.Dropout(dropout) and call self.dropout(attn_weights)")
def _ca_dropout_eval():
    return _causal_attention_variant(dropout="always")


@dropout_never_applied("CausalAttention")
def _ca_dropout_never():
    return _causal_attention_variant(dropout="never")


@mistake("CausalAttention", "dropout_on_output",
         "dropout is applied to the output (the context vectors) instead of the attention weights: in train() "
         "mode single output entries are zeroed, which dropping attention weights never does",
         "apply self.dropout to the attention weights, after the softmax: attn_weights = self.dropout(attn_weights), "
         "then return attn_weights @ values", predicate=dropout_on_output)
def _ca_dropout_output():
    return _causal_attention_variant(dropout="output")


@mistake("CausalAttention", "no_scaling",
         "the scores are not divided by sqrt(d_out) (the key size)",
         "softmax(scores / keys.shape[-1] ** 0.5, dim=-1)")
def _ca_no_scale():
    return _causal_attention_variant(scale=1.0)


@mistake("CausalAttention", "scaled_by_d_in",
         "the scores are divided by sqrt(d_in), the input size, instead of sqrt(d_out), the key size",
         "use keys.shape[-1] ** 0.5")
def _ca_d_in():
    return _causal_attention_variant(scale="d_in")


@mistake("CausalAttention", "mask_inverted",
         "the mask convention is inverted: the past is hidden and the future kept (the last token sees "
         "nothing, NaN)",
         "the buffer is True where a query may attend: masked_fill(~mask, float('-inf'))")
def _ca_inverted():
    return _causal_attention_variant(invert=True)


@mistake("CausalAttention", "masked_with_zero",
         "future scores are set to 0 instead of -inf, so later tokens leak into earlier ones",
         "fill with float('-inf') before the softmax")
def _ca_zero():
    return _causal_attention_variant(fill=0.0)


@mistake("CausalAttention", "mask_not_applied",
         "the causal mask is never applied: every token attends to later tokens",
         "attn_scores.masked_fill(~self.mask[:n, :n], float('-inf')) before the softmax")
def _ca_no_mask():
    return _causal_attention_variant(mask="none")


@mistake("CausalAttention", "diagonal_hidden",
         "the mask also hides the diagonal: the first token has no key at all (NaN), others ignore themselves",
         "the mask buffer must be True on and below the diagonal (tril())")
def _ca_no_diag():
    return _causal_attention_variant(mask="diagonal_hidden")


mask_not_cut_to_sequence_length("CausalAttention")
