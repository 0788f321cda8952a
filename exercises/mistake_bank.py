"""Known mistakes, lesson by lesson (registered with ``exercises.mistakes.mistake``).

Each variant is the reference with one thing done wrong, written compactly on top of ``solutions``
(small knobs on a shared attention core rather than copies). A diagnosis says what is wrong, a hint
how to fix it; ``docs/CHECKS.md`` (``scripts/mistake_catalogue.py``) lists them all as students see them.
Mistakes that only show as an exception are registered with ``error_hint``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

import solutions
from exercises.catalogue import DROPOUT_P
from exercises.compare import Outputs
from exercises.mistakes import error_hint, mistake
from exercises.tolerances import tolerance

NEG_INF = float("-inf")


# --- a shared attention core with one knob per mistake ------------------------------------------------


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None = None, *, fill: float = NEG_INF,
                   invert: bool = False, after: bool = False, dim: int = -1) -> torch.Tensor:
    """Softmax of ``scores`` with ``mask`` (True = may attend), done right unless a knob says otherwise.

    ``fill``: the value masked scores get; ``invert``: mask where True; ``after``: zero the weights after
    the softmax instead (no renormalisation); ``dim``: the softmax dimension.
    """
    if mask is not None and not after:
        scores = scores.masked_fill(mask if invert else ~mask, fill)
    weights = torch.softmax(scores, dim=dim)
    if mask is not None and after:
        weights = weights * mask
    return weights


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, *,
           scale: float | None = None, swap: bool = False, transpose_weights: bool = False,
           dropout: Any = None, **softmax_knobs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(output, weights)`` of scaled dot-product attention, with knobs for the classic mistakes.

    ``scale``: what the scores are divided by (default ``sqrt(d_k)``); ``swap``: scores ``k q^T``
    (queries and keys swapped); ``transpose_weights``: ``weights^T @ v``; ``dropout``: applied to the weights.
    """
    if swap:
        q, k = k, q
    scores = (q @ k.transpose(-2, -1)) / (k.shape[-1] ** 0.5 if scale is None else scale)
    weights = masked_softmax(scores, mask, **softmax_knobs)
    if dropout is not None:
        weights = dropout(weights)
    return (weights.transpose(-2, -1) if transpose_weights else weights) @ v, weights


def _sdpa(**knobs: Any):
    def scaled_dot_product_attention(q, k, v, mask=None):
        kw = dict(knobs)
        if callable(kw.get("scale")):
            kw["scale"] = kw["scale"](q, k, v)
        return attend(q, k, v, None if kw.pop("ignore_mask", False) else mask, **kw)
    return {"scaled_dot_product_attention": scaled_dot_product_attention}


def _scale_for(how: Any, x: torch.Tensor, module: Any) -> float | None:
    """A module variant's scale: None (right), a number, or ``d_in`` / ``d_out`` / ``head_dim_from_d_in``."""
    if how == "d_in":
        return x.shape[-1] ** 0.5
    if how == "d_out":
        return module.d_out ** 0.5
    if how == "head_dim_from_d_in":
        return (x.shape[-1] // module.num_heads) ** 0.5
    return how


def _causal_mask_of(module: Any, n: int, how: str) -> torch.Tensor | None:
    if how == "none":
        return None
    mask = module.mask[:n, :n]
    return mask.tril(-1) if how == "diagonal_hidden" else mask


def _dropout(module: Any, mode: str):
    """The dropout on the weights: ``right`` (the module's), ``always`` (even in eval mode) or ``never``.

    Any other mode (``output``, ``context``) puts the dropout somewhere else, so the weights get none.
    """
    if mode == "always":
        return lambda w: F.dropout(w, module.dropout.p, training=True)
    return module.dropout if mode == "right" else None


def _self_attention_v1(**knobs: Any):
    class SelfAttention_v1(solutions.SelfAttention_v1):
        def forward(self, x):
            kw = dict(knobs, scale=_scale_for(knobs.get("scale"), x, self))
            return attend(x @ self.W_query, x @ self.W_key, x @ self.W_value, **kw)[0]
    return {"SelfAttention_v1": SelfAttention_v1}


def _self_attention_v2(ignore_bias: bool = False, **knobs: Any):
    class SelfAttention_v2(solutions.SelfAttention_v2):
        def forward(self, x):
            if ignore_bias:
                q, k, v = (x @ lin.weight.T for lin in (self.W_query, self.W_key, self.W_value))
            else:
                q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)
            return attend(q, k, v, **knobs)[0]
    return {"SelfAttention_v2": SelfAttention_v2}


def _causal_attention(mask: str = "cut", dropout: str = "right", **knobs: Any):
    class CausalAttention(solutions.CausalAttention):
        def forward(self, x):
            kw = dict(knobs, scale=_scale_for(knobs.get("scale"), x, self))
            q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)
            m = _causal_mask_of(self, x.shape[1], mask)
            context = attend(q, k, v, m, dropout=_dropout(self, dropout), **kw)[0]
            return self.dropout(context) if dropout == "output" else context
    return {"CausalAttention": CausalAttention}


def _split_no_transpose(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, num_heads, d // num_heads)


def _split_viewed_as_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.reshape(b, num_heads, n, d // num_heads)


def _merge_no_transpose(x: torch.Tensor) -> torch.Tensor:
    b, h, n, hd = x.shape
    return x.reshape(b, n, h * hd)


def _multi_head_attention(split=solutions.split_heads, merge=solutions.merge_heads, out_proj: bool = True,
                          dropout: str = "right", **knobs: Any):
    class MultiHeadAttention(solutions.MultiHeadAttention):
        def forward(self, x):
            kw = dict(knobs, scale=_scale_for(knobs.get("scale"), x, self))
            q, k, v = (split(lin(x), self.num_heads) for lin in (self.W_query, self.W_key, self.W_value))
            mask = self.mask[:x.shape[1], :x.shape[1]]
            context = merge(attend(q, k, v, mask, dropout=_dropout(self, dropout), **kw)[0])
            if dropout == "context":
                context = self.dropout(context)
            out = self.out_proj(context) if out_proj else context
            return self.dropout(out) if dropout == "output" else out
    return {"MultiHeadAttention": MultiHeadAttention}


# --- lesson 1: scores, softmax, context vectors ----------------------------------------------------------

@mistake("attention_scores_loop", "float32_result_tensor",
         "the result tensor is created without `dtype=inputs.dtype`, so float64 inputs give float32 scores",
         "create it with torch.empty(n, n, dtype=inputs.dtype, device=inputs.device)")
def _loop_default_dtype():
    return {"attention_scores_loop": lambda inputs: solutions.attention_scores_loop(inputs).float()}


@mistake("attention_scores", "transposed_product",
         "the product is inputs^T @ inputs, a (d, d) matrix of feature correlations, not (n, n) token scores",
         "compute inputs @ inputs.transpose(-2, -1): rows are queries, columns keys")
def _scores_transposed_product():
    return {"attention_scores": lambda inputs: inputs.transpose(-2, -1) @ inputs}


@mistake("softmax_naive", "normalised_over_whole_tensor",
         "exp(x) is divided by the sum over the whole tensor, not along `dim`",
         "sum along the softmax dimension: exp_x.sum(dim=dim, keepdim=True)")
def _naive_whole():
    return {"softmax_naive": lambda x, dim=-1: torch.exp(x) / torch.exp(x).sum()}


@mistake("softmax_naive", "ignores_dim",
         "the softmax is always taken over the last dimension: the `dim` argument is ignored",
         "pass dim to the sum: exp_x.sum(dim=dim, keepdim=True)")
def _naive_ignores_dim():
    return {"softmax_naive": lambda x, dim=-1: solutions.softmax_naive(x)}


@mistake("softmax_stable", "no_max_subtracted",
         "the maximum is not subtracted before exp, so large scores overflow to inf and give NaN",
         "subtract x.amax(dim=dim, keepdim=True) before torch.exp")
def _softmax_no_max():
    return {"softmax_stable": lambda x, dim=-1: solutions.softmax_naive(x, dim)}


@mistake("softmax_stable", "one_max_for_whole_tensor",
         "one maximum of the whole tensor is subtracted instead of each slice's own: rows far below the "
         "global maximum underflow to 0/0 = NaN",
         "take the maximum along the softmax dimension: x.amax(dim=dim, keepdim=True)")
def _softmax_global_max():
    return {"softmax_stable": lambda x, dim=-1: solutions.softmax_naive(x - x.max(), dim)}


@mistake("softmax_stable", "ignores_dim",
         "the softmax is always taken over the last dimension: the `dim` argument is ignored",
         "use dim for both the maximum and the sum")
def _stable_ignores_dim():
    return {"softmax_stable": lambda x, dim=-1: solutions.softmax_stable(x)}


@mistake("softmax_stable", "max_along_wrong_dim",
         "the maximum is taken along the last dimension while the sum runs along `dim`, so what is "
         "subtracted varies inside a softmax slice and does not cancel",
         "take the maximum along the same dimension as the sum: x.amax(dim=dim, keepdim=True)")
def _stable_max_wrong_dim():
    def softmax_stable(x, dim=-1):
        e = torch.exp(x - x.amax(dim=-1, keepdim=True))
        return e / e.sum(dim=dim, keepdim=True)
    return {"softmax_stable": softmax_stable}


@mistake("context_vectors", "weights_transposed",
         "the weights are transposed before the product: each context vector mixes by a column of weights",
         "row i of the weights belongs to query i: compute weights @ inputs")
def _context_transposed():
    return {"context_vectors": lambda weights, inputs: weights.transpose(-2, -1) @ inputs}


@mistake("simple_self_attention", "outputs_swapped",
         "the function returns (weights, context) instead of (context, weights)",
         "return context, weights in that order")
def _simple_swapped():
    return {"simple_self_attention": lambda inputs: solutions.simple_self_attention(inputs)[::-1]}


def _simple(dim: int = -1, scale: bool = False, normalise: bool = True):
    def simple_self_attention(inputs):
        scores = solutions.attention_scores(inputs)
        if scale:
            scores = scores / inputs.shape[-1] ** 0.5
        weights = solutions.softmax_stable(scores, dim=dim) if normalise else scores
        return solutions.context_vectors(weights, inputs), weights
    return {"simple_self_attention": simple_self_attention}


@mistake("simple_self_attention", "softmax_over_dim_0",
         "the softmax runs over dim 0 (down the columns, or across the batch) instead of over the keys",
         "normalise each query's scores: softmax over dim=-1")
def _simple_dim0():
    return _simple(dim=0)


@mistake("simple_self_attention", "scores_scaled",
         "the scores are divided by sqrt(d): this simplified attention has no scaling (that comes in lesson 2)",
         "use the raw dot products inputs @ inputs^T")
def _simple_scaled():
    return _simple(scale=True)


@mistake("simple_self_attention", "scores_used_as_weights",
         "the raw scores are used as weights: no softmax, so the rows do not sum to 1",
         "apply softmax_stable(scores, dim=-1) before the context vectors")
def _simple_no_softmax():
    return _simple(normalise=False)


# --- lesson 2: scaled dot-product attention ------------------------------------------------------------

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
    return _sdpa(scale=1.0)


@mistake("scaled_dot_product_attention", "scaled_by_d_k",
         "the scores are divided by d_k instead of sqrt(d_k)",
         "divide by k.shape[-1] ** 0.5")
def _sdpa_dk():
    return _sdpa(scale=lambda q, k, v: k.shape[-1])


@mistake("scaled_dot_product_attention", "scaled_by_d_v",
         "the scores are divided by sqrt(d_v), the value size, instead of sqrt(d_k), the key size",
         "use k.shape[-1] (or q.shape[-1]), not v.shape[-1]")
def _sdpa_dv():
    return _sdpa(scale=lambda q, k, v: v.shape[-1] ** 0.5)


@mistake("scaled_dot_product_attention", "softmax_over_queries",
         "the softmax runs over the queries (dim=-2): columns sum to 1 instead of rows",
         "normalise over the keys: softmax(..., dim=-1)")
def _sdpa_dim():
    return _sdpa(dim=-2)


@mistake("scaled_dot_product_attention", "scores_transposed",
         "the scores are k @ q^T (the transpose of q @ k^T; the same as swapping the query and key arguments)",
         "compute q @ k.transpose(-2, -1): row i holds query i's scores against every key")
def _sdpa_scores_t():
    return _sdpa(swap=True)


@mistake("scaled_dot_product_attention", "weights_transposed_before_values",
         "the weights are transposed before the product with the values",
         "the output is weights @ v, with weights of shape (..., n_q, n_k)")
def _sdpa_weights_t():
    return _sdpa(transpose_weights=True)


@mistake("scaled_dot_product_attention", "mask_inverted",
         "the mask convention is inverted: positions where the mask is True are hidden, but True means "
         "'may attend'",
         "hide where the mask is False: scores.masked_fill(~mask, float('-inf'))")
def _sdpa_mask_inverted():
    return _sdpa(invert=True)


@mistake("scaled_dot_product_attention", "masked_with_zero",
         "masked scores are set to 0 instead of -inf, so masked keys still get weight exp(0)",
         "fill with float('-inf') so the softmax gives them exactly 0")
def _sdpa_mask_zero():
    return _sdpa(fill=0.0)


@mistake("scaled_dot_product_attention", "masked_after_softmax",
         "the weights are masked after the softmax without renormalising, so rows no longer sum to 1",
         "mask the scores with -inf before the softmax")
def _sdpa_mask_after():
    return _sdpa(after=True)


@mistake("scaled_dot_product_attention", "mask_ignored",
         "the mask argument is ignored: every query attends to every key",
         "when mask is not None, fill the scores where ~mask with -inf before the softmax")
def _sdpa_mask_ignored():
    return _sdpa(ignore_mask=True)


# --- lesson 3: trainable weights ------------------------------------------------------------------------

@mistake("SelfAttention_v1", "no_scaling",
         "the scores are not divided by sqrt(d_out) (the key size)",
         "softmax(scores / keys.shape[-1] ** 0.5, dim=-1)")
def _v1_no_scale():
    return _self_attention_v1(scale=1.0)


@mistake("SelfAttention_v1", "scaled_by_d_in",
         "the scores are divided by sqrt(d_in), the input size, instead of sqrt(d_out), the key size",
         "use keys.shape[-1] ** 0.5")
def _v1_d_in():
    return _self_attention_v1(scale="d_in")


@mistake("SelfAttention_v1", "query_key_swapped",
         "the query and key projections are swapped (the same as transposing the scores)",
         "queries = x @ self.W_query, keys = x @ self.W_key, scores = queries @ keys^T")
def _v1_swapped():
    return _self_attention_v1(swap=True)


@mistake("SelfAttention_v2", "qkv_bias_ignored",
         "the biases of the nn.Linear layers are ignored (x @ layer.weight.T drops them), so qkv_bias=True "
         "has no effect",
         "call the layers: self.W_query(x), self.W_key(x), self.W_value(x)")
def _v2_bias():
    return _self_attention_v2(ignore_bias=True)


@mistake("SelfAttention_v2", "no_scaling",
         "the scores are not divided by sqrt(d_out) (the key size)",
         "softmax(scores / keys.shape[-1] ** 0.5, dim=-1)")
def _v2_no_scale():
    return _self_attention_v2(scale=1.0)


@mistake("SelfAttention_v2", "softmax_over_queries",
         "the softmax runs over the queries (dim=-2) instead of the keys",
         "softmax(..., dim=-1)")
def _v2_dim():
    return _self_attention_v2(dim=-2)


QKV_BIAS_NOT_USED = r"missing \[[^\]]*\.bias'"
error_hint("SelfAttention_v2", "qkv_bias_not_passed", QKV_BIAS_NOT_USED,
           "the layers have no bias even when qkv_bias=True: the argument is not passed on to nn.Linear",
           "nn.Linear(d_in, d_out, bias=qkv_bias) for each of W_query, W_key and W_value")


def _transfer(pairs: dict[str, str], how: str = "transpose"):
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
    return _transfer(QKV, how="as_is")


@mistake("transfer_weights", "reshaped_instead_of_transposed",
         "the (d_out, d_in) weights are reshaped to (d_in, d_out) instead of transposed, which scrambles them",
         "nn.Linear computes x @ weight.T: copy weight.T")
def _transfer_reshape():
    return _transfer(QKV, how="reshape")


@mistake("transfer_weights", "query_key_swapped",
         "the query and key weights are copied into each other's places",
         "copy W_query into W_query, W_key into W_key, W_value into W_value")
def _transfer_swapped():
    return _transfer({"W_query": "W_key", "W_key": "W_query", "W_value": "W_value"})


@mistake("transfer_weights", "value_weights_not_copied",
         "W_value is not copied, so sa_v1 keeps its own random value weights",
         "copy all three: W_query, W_key and W_value")
def _transfer_no_value():
    return _transfer({"W_query": "W_query", "W_key": "W_key"})


error_hint("transfer_weights", "copied_without_transpose",
           r"size of tensor a \(\d+\) must match|shapes cannot be multiplied|must match the size",
           "the weights were copied without the transpose: nn.Linear stores (d_out, d_in), SelfAttention_v1 "
           "needs (d_in, d_out)",
           "copy sa_v2.W_query.weight.T (and the same for W_key and W_value)")


# --- lesson 4: causal attention ---------------------------------------------------------------------------

def _dropped_entrywise(runs: list[torch.Tensor], base: torch.Tensor, zero_tol: float, kept_tol: torch.Tensor) -> bool:
    """Every entry of every run is 0 or ``base / (1 - p)`` (entrywise dropout of ``base``), and some row
    holds both a dropped and a kept entry (which dropout of the attention weights never gives)."""
    scale = 1 / (1 - DROPOUT_P)
    mixed = False
    for run in runs:
        zero = run.abs() <= zero_tol
        kept = (run - scale * base).abs() <= kept_tol
        if not bool((zero | kept).all()):
            return False
        mixed = mixed or bool(((zero & ~kept).any(-1) & (kept & ~zero).any(-1)).any())
    return mixed


def _train_runs(student: Outputs, reference: Outputs) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
    """The right eval() output and the student's two train() outputs of the dropout case, in float64."""
    ev, ref_ev = student.tensor("eval_out"), reference.tensor("eval_out")
    runs = [student.tensor("train_a"), student.tensor("train_b")]
    if ev is None or ref_ev is None or any(t is None or t.shape != ref_ev.shape for t in (ev, *runs)):
        return None
    if ev.dtype != ref_ev.dtype or not torch.allclose(ev, ref_ev, *tolerance(ref_ev.dtype)):
        return None
    return ref_ev.double(), [t.double() for t in runs]


def _dropout_on_output(student: Outputs, reference: Outputs) -> bool:
    """The train() outputs are the eval() output with single entries zeroed and the rest scaled by 1/(1-p)."""
    found = _train_runs(student, reference)
    if found is None:
        return False
    base, runs = found
    rtol, atol = tolerance(reference.tensors["eval_out"].dtype)
    return _dropped_entrywise(runs, base, 0.0, 2 * (atol + rtol * base.abs()) / (1 - DROPOUT_P))


def _dropout_on_context(student: Outputs, reference: Outputs) -> bool:
    """Undo out_proj: the context vectors behind the train() outputs are dropped entry by entry."""
    found = _train_runs(student, reference)
    weight, bias = reference.tensor("params.out_proj.weight"), reference.tensor("params.out_proj.bias")
    if found is None or weight is None or bias is None:
        return False
    weight, bias = weight.double(), bias.double()

    def context(out: torch.Tensor) -> torch.Tensor:  # out = context @ weight.T + bias
        return torch.linalg.solve(weight, (out - bias).transpose(-2, -1)).transpose(-2, -1)

    base, runs = found
    tol = 1e-3 * float(base.abs().max())  # solving amplifies rounding: a loose, scale-aware tolerance
    return _dropped_entrywise([context(run) for run in runs], context(base), tol, torch.tensor(tol))


def _mask(diagonal: int = 0, upper: bool = False, dtype: torch.dtype = torch.bool):
    def causal_mask(num_tokens, device=None):
        ones = torch.ones(num_tokens, num_tokens, dtype=dtype, device=device)
        return ones.triu(diagonal) if upper else ones.tril(diagonal)
    return {"causal_mask": causal_mask}


@mistake("causal_mask", "diagonal_hidden",
         "the diagonal is False: a token may not attend to itself (tril(diagonal=-1))",
         "torch.ones(n, n, dtype=torch.bool).tril(): True on and below the diagonal")
def _mask_no_diag():
    return _mask(diagonal=-1)


@mistake("causal_mask", "convention_inverted",
         "the mask is True above the diagonal (the positions to hide), but True means 'may attend'",
         "return the complement: True on and below the diagonal, .tril()")
def _mask_inverted():
    return _mask(diagonal=1, upper=True)


@mistake("causal_mask", "hides_the_past",
         "the mask is True on and above the diagonal: each token attends to the future, not the past",
         "use .tril(), not .triu()")
def _mask_future():
    return _mask(upper=True)


@mistake("causal_mask", "float_mask",
         "the mask is a float tensor of 0s and 1s instead of a boolean tensor",
         "create it with dtype=torch.bool (or call .bool())")
def _mask_float():
    return _mask(dtype=torch.float32)


def _weights(*, diagonal: int = 0, scale: bool = False, **knobs: Any):
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
    return _weights(fill=0.0)


@mistake("causal_attention_weights", "masked_after_softmax",
         "the future weights are zeroed after the softmax without renormalising: rows do not sum to 1",
         "mask the scores with -inf before the softmax (or divide each row by its new sum)")
def _weights_after():
    return _weights(after=True)


@mistake("causal_attention_weights", "diagonal_hidden",
         "the mask also hides the diagonal, so the first token has no key at all (NaN) and every token "
         "ignores itself",
         "keep the diagonal: tril() (diagonal=0), or triu(diagonal=1) for the positions to hide")
def _weights_no_diag():
    return _weights(diagonal=-1)


@mistake("causal_attention_weights", "mask_inverted",
         "the mask convention is inverted: the past is hidden and the future kept",
         "hide where the causal mask is False: masked_fill(~mask, -inf) with mask = tril")
def _weights_inverted():
    return _weights(invert=True)


@mistake("causal_attention_weights", "scores_scaled",
         "the scores are divided by sqrt(n): this function gets scores that are already scaled",
         "apply only the mask and the softmax")
def _weights_scaled():
    return _weights(scale=True)


@mistake("CausalAttention", "dropout_active_in_eval",
         "dropout is applied even in eval() mode (F.dropout without training=self.training, or a dropout "
         "that ignores the module's mode)",
         "use self.dropout = nn.Dropout(dropout) and call self.dropout(attn_weights)")
def _ca_dropout_eval():
    return _causal_attention(dropout="always")


@mistake("CausalAttention", "dropout_never_applied",
         "the dropout layer is created but never applied, so train() mode gives the same output every time",
         "in forward: attn_weights = self.dropout(attn_weights), after the softmax")
def _ca_dropout_never():
    return _causal_attention(dropout="never")


@mistake("CausalAttention", "dropout_on_output",
         "dropout is applied to the output (the context vectors) instead of the attention weights: in train() "
         "mode single output entries are zeroed, which dropping attention weights never does",
         "apply self.dropout to the attention weights, after the softmax: attn_weights = self.dropout(attn_weights), "
         "then return attn_weights @ values", predicate=_dropout_on_output)
def _ca_dropout_output():
    return _causal_attention(dropout="output")


@mistake("CausalAttention", "no_scaling",
         "the scores are not divided by sqrt(d_out) (the key size)",
         "softmax(scores / keys.shape[-1] ** 0.5, dim=-1)")
def _ca_no_scale():
    return _causal_attention(scale=1.0)


@mistake("CausalAttention", "scaled_by_d_in",
         "the scores are divided by sqrt(d_in), the input size, instead of sqrt(d_out), the key size",
         "use keys.shape[-1] ** 0.5")
def _ca_d_in():
    return _causal_attention(scale="d_in")


@mistake("CausalAttention", "mask_inverted",
         "the mask convention is inverted: the past is hidden and the future kept (the last token sees "
         "nothing, NaN)",
         "the buffer is True where a query may attend: masked_fill(~mask, float('-inf'))")
def _ca_inverted():
    return _causal_attention(invert=True)


@mistake("CausalAttention", "masked_with_zero",
         "future scores are set to 0 instead of -inf, so later tokens leak into earlier ones",
         "fill with float('-inf') before the softmax")
def _ca_zero():
    return _causal_attention(fill=0.0)


@mistake("CausalAttention", "mask_not_applied",
         "the causal mask is never applied: every token attends to later tokens",
         "attn_scores.masked_fill(~self.mask[:n, :n], float('-inf')) before the softmax")
def _ca_no_mask():
    return _causal_attention(mask="none")


@mistake("CausalAttention", "diagonal_hidden",
         "the mask also hides the diagonal: the first token has no key at all (NaN), others ignore themselves",
         "the mask buffer must be True on and below the diagonal (tril())")
def _ca_no_diag():
    return _causal_attention(mask="diagonal_hidden")


MASK_NOT_CUT = (r"size of tensor a \(\d+\) must match the size of tensor b \(\d+\)|"
                r"doesn't match the broadcast shape")
error_hint("CausalAttention", "mask_not_cut_to_sequence_length", MASK_NOT_CUT,
           "the (context_length, context_length) mask is used whole, so a sequence shorter than "
           "context_length cannot be masked (shape mismatch)",
           "cut it to the sequence length: self.mask[:num_tokens, :num_tokens]")


# --- lesson 5: multi-head attention ----------------------------------------------------------------------

def _wrapper(cat_dim: int = -1, first_only: bool = False):
    class MultiHeadAttentionWrapper(solutions.MultiHeadAttentionWrapper):
        def forward(self, x):
            heads = [self.heads[0]] * len(self.heads) if first_only else self.heads
            return torch.cat([head(x) for head in heads], dim=cat_dim)
    return {"MultiHeadAttentionWrapper": MultiHeadAttentionWrapper}


@mistake("MultiHeadAttentionWrapper", "concatenated_on_token_axis",
         "the heads' outputs are concatenated along the tokens (dim=1) instead of the features",
         "torch.cat([head(x) for head in self.heads], dim=-1)")
def _wrapper_axis():
    return _wrapper(cat_dim=1)


@mistake("MultiHeadAttentionWrapper", "first_head_repeated",
         "the first head's output is used for every head",
         "call each head: [head(x) for head in self.heads]")
def _wrapper_first():
    return _wrapper(first_only=True)


error_hint("MultiHeadAttentionWrapper", "same_head_repeated", r"missing \['heads\.1\.",
           "the ModuleList holds one CausalAttention num_heads times ([head] * num_heads), so all heads share "
           "one set of weights",
           "create a new head per iteration: nn.ModuleList([CausalAttention(...) for _ in range(num_heads)])")
error_hint("MultiHeadAttentionWrapper", "qkv_bias_not_passed", QKV_BIAS_NOT_USED,
           "the heads have no bias even when qkv_bias=True: the argument is not passed on to CausalAttention",
           "CausalAttention(d_in, d_out, context_length, dropout, qkv_bias)")


@mistake("split_heads", "no_transpose",
         "the heads are split with view(b, n, h, d // h) but not transposed to (b, h, n, d // h)",
         "follow the view with .transpose(1, 2)")
def _split_no_t():
    return {"split_heads": _split_no_transpose}


@mistake("split_heads", "viewed_as_heads_directly",
         "the tensor is viewed as (b, h, n, d // h) directly, which mixes tokens into heads",
         "view as (b, n, h, d // h) first, then transpose(1, 2)")
def _split_direct():
    return {"split_heads": _split_viewed_as_heads}


@mistake("merge_heads", "no_transpose",
         "the heads are merged with a reshape to (b, n, h * hd) without first transposing back to (b, n, h, hd)",
         "x.transpose(1, 2).contiguous().view(b, n, h * hd)")
def _merge_no_t():
    return {"merge_heads": _merge_no_transpose}


@mistake("MultiHeadAttention", "no_output_projection",
         "the output projection self.out_proj is never applied to the merged heads",
         "return self.out_proj(context_vec)")
def _mha_no_proj():
    return _multi_head_attention(out_proj=False)


@mistake("MultiHeadAttention", "split_without_transpose",
         "the projections are split into heads with view(b, h, n, hd) (or view(b, n, h, hd) without "
         "transpose(1, 2)), which mixes tokens into heads",
         "view(b, n, num_heads, head_dim).transpose(1, 2)")
def _mha_split():
    return _multi_head_attention(split=_split_viewed_as_heads)


@mistake("MultiHeadAttention", "merge_without_transpose",
         "the heads are merged without transposing (b, h, n, hd) back to (b, n, h, hd)",
         "context.transpose(1, 2).contiguous().view(b, n, d_out)")
def _mha_merge():
    return _multi_head_attention(merge=_merge_no_transpose)


@mistake("MultiHeadAttention", "scaled_by_d_out",
         "the scores are divided by sqrt(d_out) instead of sqrt(head_dim), the size of one head's keys",
         "divide by keys.shape[-1] ** 0.5 after the split (head_dim = d_out // num_heads)")
def _mha_d_out():
    return _multi_head_attention(scale="d_out")


@mistake("MultiHeadAttention", "head_dim_from_d_in",
         "the head size is computed from d_in (d_in // num_heads) instead of d_out, so the scaling is wrong",
         "head_dim = d_out // num_heads")
def _mha_head_dim():
    return _multi_head_attention(scale="head_dim_from_d_in")


@mistake("MultiHeadAttention", "dropout_active_in_eval",
         "dropout is applied even in eval() mode (F.dropout without training=self.training)",
         "use self.dropout = nn.Dropout(dropout) and call self.dropout(attn_weights)")
def _mha_dropout():
    return _multi_head_attention(dropout="always")


@mistake("MultiHeadAttention", "dropout_never_applied",
         "the dropout layer is created but never applied, so train() mode gives the same output every time",
         "in forward: attn_weights = self.dropout(attn_weights), after the softmax")
def _mha_dropout_never():
    return _multi_head_attention(dropout="never")


@mistake("MultiHeadAttention", "dropout_on_output",
         "dropout is applied to the output (after out_proj) instead of the attention weights: in train() mode "
         "single output entries are zeroed",
         "apply self.dropout to the attention weights, after the softmax and before the product with the values; "
         "return self.out_proj(context_vec) as it is", predicate=_dropout_on_output)
def _mha_dropout_output():
    return _multi_head_attention(dropout="output")


@mistake("MultiHeadAttention", "dropout_on_context",
         "dropout is applied to the merged context vectors (before out_proj) instead of the attention weights: in "
         "train() mode single context entries are zeroed",
         "apply self.dropout to the attention weights (b, h, n, n), after the softmax: "
         "attn_weights = self.dropout(attn_weights), then context_vec = attn_weights @ values",
         predicate=_dropout_on_context)
def _mha_dropout_context():
    return _multi_head_attention(dropout="context")


def _raised_nothing(student: Outputs, reference: Outputs) -> bool:
    return student.meta.get("raised", {}).get("value") == ""


@mistake("MultiHeadAttention", "no_divisibility_check",
         "MultiHeadAttention accepts a d_out that num_heads does not divide, and silently drops features",
         "in __init__: if d_out % num_heads != 0: raise ValueError(...)", predicate=_raised_nothing)
def _mha_no_check():
    class MultiHeadAttention(solutions.MultiHeadAttention):
        def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
            super().__init__(d_in, d_out - d_out % num_heads, context_length, dropout, num_heads, qkv_bias)
    return {"MultiHeadAttention": MultiHeadAttention}


error_hint("MultiHeadAttention", "mask_not_cut_to_sequence_length", MASK_NOT_CUT,
           "the (context_length, context_length) mask is used whole, so a sequence shorter than "
           "context_length cannot be masked (shape mismatch)",
           "cut it to the sequence length: self.mask[:num_tokens, :num_tokens]")
error_hint("MultiHeadAttention", "head_dim_from_d_in", r"shape '\[[\d, ]+\]' is invalid for input of size",
           "the split does not fit the projected features: is the head size computed from d_in instead of d_out?",
           "head_dim = d_out // num_heads; view(b, n, num_heads, head_dim)")


@mistake("count_parameters", "counts_frozen_parameters",
         "parameters with requires_grad=False are counted too",
         "count only trainable ones: sum(p.numel() for p in module.parameters() if p.requires_grad)")
def _count_frozen():
    return {"count_parameters": lambda module: sum(p.numel() for p in module.parameters())}


@mistake("count_parameters", "counts_state_dict",
         "everything in state_dict() is counted: buffers (such as a causal mask) and frozen parameters too",
         "count module.parameters() with requires_grad, not state_dict() entries")
def _count_state():
    return {"count_parameters": lambda module: sum(t.numel() for t in module.state_dict().values())}


@mistake("count_parameters", "counts_buffers",
         "buffers (module.buffers(): BatchNorm's running statistics, a registered causal mask) are counted as if "
         "they were parameters",
         "buffers are not trained: count only sum(p.numel() for p in module.parameters() if p.requires_grad)")
def _count_buffers():
    def count_parameters(module):
        return solutions.count_parameters(module) + sum(b.numel() for b in module.buffers())
    return {"count_parameters": count_parameters}


@mistake("count_parameters", "counts_tensors_not_elements",
         "the number of parameter tensors is counted, not the number of values in them",
         "add up p.numel() for each trainable parameter p")
def _count_tensors():
    return {"count_parameters": lambda module: sum(1 for p in module.parameters() if p.requires_grad)}


# --- lesson 6: training and plotting -----------------------------------------------------------------------

def _train(*, step: bool = True, zero_grad: bool = True, after: bool = False, loss_fn=F.mse_loss,
           as_tensors: bool = False, returns: bool = True):
    def train_self_attention(model, inputs, targets, steps, lr):
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        losses = []
        for _ in range(steps):
            if zero_grad:
                optimizer.zero_grad()
            loss = loss_fn(model(inputs)[0], targets)
            loss.backward()
            if step:
                optimizer.step()
            if after:
                with torch.no_grad():
                    loss = loss_fn(model(inputs)[0], targets)
            losses.append(loss if as_tensors else loss.item())
        return losses if returns else None
    return {"train_self_attention": train_self_attention}


def _losses(outputs: Outputs) -> torch.Tensor | None:
    meta = outputs.meta.get("losses", {})
    if meta.get("pytype") not in ("list", "tuple") or not meta.get("numbers"):
        return None
    return outputs.tensors["losses"]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-3, atol=1e-6))


def _never_steps(student: Outputs, reference: Outputs) -> bool:
    s = _losses(student)
    return s is not None and len(s) > 1 and bool((s == s[0]).all())


def _no_zero_grad(student: Outputs, reference: Outputs) -> bool:
    s, r = _losses(student), _losses(reference)
    return (s is not None and r is not None and len(s) == len(r) > 2 and _close(s[:2], r[:2])
            and not _close(s[2:], r[2:]) and not float(s[-1]) < 0.5 * float(s[0]))


def _loss_after_step(student: Outputs, reference: Outputs) -> bool:
    s, r = _losses(student), _losses(reference)
    # Only the first recorded loss: later ones drift apart between two equally correct float32 models (the
    # notebook's given class and the reference's), since Adam's first steps follow the gradients' signs.
    return s is not None and r is not None and len(s) == len(r) > 1 and _close(s[:1], r[1:2])


def _other_loss(student: Outputs, reference: Outputs) -> bool:
    s, r = _losses(student), _losses(reference)
    return (s is not None and r is not None and len(s) == len(r) > 1 and bool(torch.isfinite(s).all())
            and not _close(s[:1], r[:1]) and not _close(s[:1], r[1:2]) and float(s[-1]) < float(s[0]))


def _losses_are_tensors(student: Outputs, reference: Outputs) -> bool:
    meta = student.meta.get("losses", {})
    return (meta.get("pytype") in ("list", "tuple") and not meta.get("numbers")
            and student.meta.get("losses.0", {}).get("pytype") == "Tensor")


def _returned(key: str, kind: str):
    def predicate(student: Outputs, reference: Outputs) -> bool:
        return student.meta.get(key, {}).get("pytype") == kind
    return predicate


@mistake("train_self_attention", "optimiser_never_steps",
         "the weights never change, so the loss stays flat: optimizer.step() is missing (or loss.backward() "
         "is, and there are no gradients; the two cannot be told apart from the losses)",
         "each step: optimizer.zero_grad(), loss.backward(), optimizer.step()", predicate=_never_steps)
def _train_no_step():
    return _train(step=False)


@mistake("train_self_attention", "no_zero_grad",
         "the gradients are never reset, so each step uses the sum of all past gradients and the loss blows up "
         "after the first step",
         "call optimizer.zero_grad() at the start of every step", predicate=_no_zero_grad)
def _train_no_zero():
    return _train(zero_grad=False)


@mistake("train_self_attention", "loss_recorded_after_step",
         "the losses are recorded after the optimiser step (losses[0] is already the trained model's loss)",
         "append loss.item() of the loss you call backward() on, computed before optimizer.step()",
         predicate=_loss_after_step)
def _train_after():
    return _train(after=True)


@mistake("train_self_attention", "not_mean_squared_error",
         "the model trains, but the first loss is not the mean-squared error of the untrained model: a "
         "different loss (e.g. L1, or a sum instead of a mean)?",
         "loss = F.mse_loss(output, targets), with output = model(inputs)[0]", predicate=_other_loss)
def _train_l1():
    return _train(loss_fn=F.l1_loss)


@mistake("train_self_attention", "losses_are_tensors",
         "the losses are appended as tensors, not Python floats",
         "append loss.item()", predicate=_losses_are_tensors)
def _train_tensors():
    return _train(as_tensors=True)


@mistake("train_self_attention", "returns_nothing",
         "the function returns None: the list of losses is never returned",
         "end with return losses", predicate=_returned("losses", "NoneType"))
def _train_none():
    return _train(returns=False)


def _plot(*, xticks: bool = True, yticks: bool = True, transpose: bool = False, returns: str = "fig"):
    def plot_attention(weights, tokens):
        from matplotlib.figure import Figure

        fig = Figure()
        ax = fig.add_subplot()
        w = weights.detach().cpu().float()
        ax.imshow((w.T if transpose else w).numpy())
        n = len(tokens)
        if xticks:
            ax.set_xticks(range(n), labels=list(tokens))
        if yticks:
            ax.set_yticks(range(n), labels=list(tokens))
        return {"fig": fig, "ax": ax, "none": None}[returns]
    return {"plot_attention": plot_attention}


def _heatmaps(student: Outputs, reference: Outputs, transposed: bool = False) -> list[dict[str, Any]]:
    """The student's axes holding an image equal to the reference heatmap (or its transpose)."""
    ref_ax = reference.meta["fig"]["axes"][0]
    expected = reference.tensors[ref_ax["images"][0]]
    if transposed:
        expected = expected.T
    found = []
    for ax in student.meta.get("fig", {}).get("axes", []):
        for image in ax["images"]:
            data = student.tensors.get(image)
            if data is not None and data.shape == expected.shape and torch.allclose(data, expected, atol=1e-3):
                found.append(ax)
    return found


def _labels(missing: str):
    def predicate(student: Outputs, reference: Outputs) -> bool:
        tokens = reference.meta["fig"]["axes"][0]["xticklabels"]
        for ax in _heatmaps(student, reference):
            have = (ax["xticklabels"] == tokens, ax["yticklabels"] == tokens)
            if (missing == "both" and not any(have)) or (missing == "one" and sum(have) == 1):
                return True
        return False
    return predicate


def _transposed_heatmap(student: Outputs, reference: Outputs) -> bool:
    return bool(_heatmaps(student, reference, transposed=True)) and not _heatmaps(student, reference)


@mistake("plot_attention", "returns_nothing",
         "the function returns None (plt.show() or no return statement)",
         "create fig, ax = plt.subplots() and end with return fig", predicate=_returned("fig", "NoneType"))
def _plot_none():
    return _plot(returns="none")


@mistake("plot_attention", "returns_axes",
         "the function returns the Axes, not the Figure",
         "return fig (from fig, ax = plt.subplots()), not ax", predicate=_returned("fig", "Axes"))
def _plot_axes():
    return _plot(returns="ax")


@mistake("plot_attention", "tick_labels_missing",
         "the heatmap has no token tick labels",
         "ax.set_xticks(range(n), labels=tokens) and ax.set_yticks(range(n), labels=tokens)",
         predicate=_labels("both"))
def _plot_no_labels():
    return _plot(xticks=False, yticks=False)


@mistake("plot_attention", "tick_labels_on_one_axis",
         "the tokens label only one axis: queries (rows, y) and keys (columns, x) both need them",
         "set both: ax.set_xticks(range(n), labels=tokens) and ax.set_yticks(range(n), labels=tokens)",
         predicate=_labels("one"))
def _plot_one_axis():
    return _plot(yticks=False)


@mistake("plot_attention", "heatmap_transposed",
         "the heatmap shows the transposed weights: keys as rows and queries as columns",
         "ax.imshow(weights): row i (y) is query i, column j (x) is key j", predicate=_transposed_heatmap)
def _plot_transposed():
    return _plot(transpose=True)


# --- lesson 7: sliding windows and tiling ------------------------------------------------------------------

def _window(rule):
    def sliding_window_mask(num_tokens, window_size, device=None):
        positions = torch.arange(num_tokens, device=device)
        return rule(positions[:, None] - positions[None, :], window_size)
    return {"sliding_window_mask": sliding_window_mask}


@mistake("sliding_window_mask", "window_one_too_wide",
         "the window is one token too wide: i - j <= window_size lets a query see window_size + 1 tokens",
         "keep 0 <= i - j < window_size (the query itself counts)")
def _window_wide():
    return _window(lambda d, w: (d >= 0) & (d <= w))


@mistake("sliding_window_mask", "window_one_too_narrow",
         "the window is one token too narrow: a query sees only window_size - 1 tokens",
         "keep 0 <= i - j < window_size (the query itself counts)")
def _window_narrow():
    return _window(lambda d, w: (d >= 0) & (d < w - 1))


@mistake("sliding_window_mask", "not_causal",
         "the window is symmetric (|i - j| < window_size): queries see later tokens too",
         "require i - j >= 0 as well")
def _window_symmetric():
    return _window(lambda d, w: d.abs() < w)


@mistake("sliding_window_mask", "window_ignored",
         "the mask is only causal: window_size is ignored",
         "add the condition i - j < window_size")
def _window_ignored():
    return _window(lambda d, w: d >= 0)


def _online(*, rescale_sum: bool = True, rescale_acc: bool = True, use_causal: bool = True, scale: bool = True,
            hide_diagonal: bool = False, drop_partial_block: bool = False, bottom_right: bool = False):
    def online_softmax_attention(q, k, v, block_size=64, causal=False):
        causal = causal and use_causal
        n_q, d = q.shape[-2:]
        n_k, d_v = v.shape[-2:]
        batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
        m = q.new_full((*batch, n_q, 1), NEG_INF)
        l = q.new_zeros((*batch, n_q, 1))
        acc = q.new_zeros((*batch, n_q, d_v))
        query_pos = torch.arange(n_q, device=q.device)[:, None] + (n_k - n_q if bottom_right else 0)
        stop = n_k - block_size + 1 if drop_partial_block else n_k
        for start in range(0, stop, block_size):
            end = min(start + block_size, n_k)
            scores = q @ k[..., start:end, :].transpose(-2, -1) / (d ** 0.5 if scale else 1.0)
            if causal:
                key_pos = torch.arange(start, end, device=q.device)[None, :]
                future = key_pos >= query_pos if hide_diagonal else key_pos > query_pos
                scores = scores.masked_fill(future, NEG_INF)
            m_new = torch.maximum(m, scores.amax(-1, keepdim=True))
            m_safe = torch.where(m_new == NEG_INF, torch.zeros_like(m_new), m_new)
            p = torch.exp(scores - m_safe)
            rescale = torch.exp(m - m_safe)
            l = (rescale * l if rescale_sum else l) + p.sum(-1, keepdim=True)
            acc = (rescale * acc if rescale_acc else acc) + p @ v[..., start:end, :]
            m = m_new
        return acc / l
    return {"online_softmax_attention": online_softmax_attention}


@mistake("online_softmax_attention", "running_sum_not_rescaled",
         "the running sum is not rescaled by exp(m_old - m_new) when the maximum grows",
         "l = exp(m_old - m_new) * l + p.sum(-1, keepdim=True)")
def _online_sum():
    return _online(rescale_sum=False)


@mistake("online_softmax_attention", "accumulator_not_rescaled",
         "the output accumulator is not rescaled by exp(m_old - m_new) when the maximum grows",
         "acc = exp(m_old - m_new) * acc + p @ v_block")
def _online_acc():
    return _online(rescale_acc=False)


@mistake("online_softmax_attention", "causal_ignored",
         "causal=True is ignored: queries attend to later keys",
         "in each block, fill scores where key position > query position with -inf")
def _online_causal():
    return _online(use_causal=False)


@mistake("online_softmax_attention", "no_scaling",
         "the scores are not divided by sqrt(d)",
         "scores = q @ k_block^T / d ** 0.5")
def _online_scale():
    return _online(scale=False)


@mistake("online_softmax_attention", "causal_hides_diagonal",
         "the causal mask also hides the diagonal (key >= query), so the first query has no key (NaN)",
         "mask only later keys: key position > query position")
def _online_diag():
    return _online(hide_diagonal=True)


@mistake("online_softmax_attention", "last_partial_block_dropped",
         "the last block is skipped when block_size does not divide n_k (or exceeds it)",
         "loop for start in range(0, n_k, block_size) with end = min(start + block_size, n_k)")
def _online_partial():
    return _online(drop_partial_block=True)


@mistake("online_softmax_attention", "causal_aligned_bottom_right",
         "the causal mask is aligned bottom-right (query i sees keys j <= i + n_k - n_q): with n_q != n_k the "
         "queries see the wrong keys (and with n_q > n_k the first ones none at all, NaN)",
         "align top-left, like scaled_dot_product_attention(is_causal=True): mask where key position j > "
         "query position i, with no offset")
def _online_bottom_right():
    return _online(bottom_right=True)


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
