"""Lesson 5, multi-head attention: the wrapper of heads, splitting and merging heads, ``MultiHeadAttention``,
counting parameters. Their cases, their items and their known mistakes.
"""

from __future__ import annotations

from typing import Any

import torch

import solutions
from exercises.cases import (
    BUILTIN_MHA,
    BUILTIN_SDPA,
    DROPOUT_P,
    QUERY_FEATURE_DIMS,
    Case,
    Item,
    build_module,
    call,
    causal_leak_case,
    dropout_case,
    eval_matches,
    forward,
    literal_arg,
    module_cases,
    module_invariants,
    rand,
    reference_params,
    tensor_arg,
    var_arg,
)
from exercises.compare import Outputs, value_mismatch
from exercises.i18n import tr
from exercises.mistake_core import (
    QKV_BIAS_NOT_USED,
    attend,
    dropout_never_applied,
    dropout_on_output,
    dropped_entrywise,
    mask_not_cut_to_sequence_length,
    scale_for,
    train_runs,
    weights_dropout,
)
from exercises.mistakes import error_hint, mistake

NOTEBOOK = "05_multi_head_attention.ipynb"


# --- cases ----------------------------------------------------------------------------------------------


def _heads_independent(gen, dtype) -> Case:
    """With an identity output projection, head h's output columns depend on head h's projections only."""
    cls = "MultiHeadAttention"
    kwargs = {"d_in": 6, "d_out": 8, "context_length": 5, "dropout": 0.0, "num_heads": 2}
    params = reference_params(cls, kwargs, gen, dtype)
    params["p.out_proj.weight"] = torch.eye(8, dtype=dtype)
    params["p.out_proj.bias"] = torch.zeros(8, dtype=dtype)
    changed = {k.replace("p.", "q.", 1): v.clone() for k, v in params.items()}
    changed["q.W_query.weight"][:4] = rand(gen, 4, 6, dtype=dtype)  # rows of head 0 only
    changed["q.W_value.weight"][:4] = rand(gen, 4, 6, dtype=dtype)
    program = build_module(cls, kwargs, params) + forward("m", tensor_arg("x"), out="out") + \
        build_module(cls, kwargs, changed, var="m2", prefix="q.") + forward("m2", tensor_arg("x"), out="out_changed")

    def check(student: Outputs, reference: Outputs) -> str | None:
        a, b = student.tensor("out"), student.tensor("out_changed")
        if a is None or b is None or a.shape != b.shape or a.shape[-1] != 8:
            return None
        if value_mismatch("out", b[..., 4:], a[..., 4:]) is not None:
            return tr("heads are not independent: changing head 0's query/value weights changed head 1's output "
                      "columns; split with .view(b, n, h, hd).transpose(1, 2) and merge with the inverse")
        if torch.equal(a[..., :4], b[..., :4]):
            return tr("head 0's output did not change when its own weights changed: are its weights used at all?")
        return None
    return Case("heads_independent", program, {**params, **changed, "x": rand(gen, 2, 5, 6, dtype=dtype)},
                {"out": ("batch",) + QUERY_FEATURE_DIMS}, (check,), compare=False)


def _mha_wrapper(gen, dtype):
    cls = "MultiHeadAttentionWrapper"
    base = {"d_in": 4, "d_out": 2, "context_length": 6, "dropout": 0.0, "num_heads": 3}
    cases = module_cases(cls, [
        ("three_heads", base, (2, 6, 4)),
        ("shorter_sequence", {**base, "num_heads": 2, "qkv_bias": True}, (2, 4, 4)),
        ("eval_ignores_dropout", {**base, "dropout": 0.5}, (1, 5, 4)),
    ], gen, dtype)
    cases.append(causal_leak_case(cls, base, gen, dtype, 2, 6, 2))
    return cases


def _split(gen, dtype):
    return [Case(f"b{b}_n{n}_d{d}_h{h}", call("split_heads", tensor_arg("x"), literal_arg(h)),
                 {"x": rand(gen, b, n, d, dtype=dtype)}, {"out": ("batch", "head", "query", "feature")})
            for b, n, d, h in [(2, 5, 12, 3), (1, 7, 8, 8), (3, 1, 6, 2), (2, 4, 6, 1)]]


def _merge(gen, dtype):
    return [Case(f"b{b}_h{h}_n{n}_hd{hd}", call("merge_heads", tensor_arg("x")),
                 {"x": rand(gen, b, h, n, hd, dtype=dtype)}, {"out": ("batch", "query", "feature")})
            for b, h, n, hd in [(2, 3, 5, 4), (1, 8, 7, 1), (3, 2, 1, 3)]]


def _mha(gen, dtype):
    cls = "MultiHeadAttention"
    base = {"d_in": 6, "d_out": 8, "context_length": 7, "dropout": 0.0, "num_heads": 2}
    cases = module_cases(cls, [
        ("two_heads", base, (2, 7, 6)),
        ("four_heads_shorter", {**base, "num_heads": 4}, (3, 5, 6)),
        ("qkv_bias_one_head", {**base, "num_heads": 1, "qkv_bias": True}, (2, 6, 6)),
        ("eval_ignores_dropout", {**base, "dropout": 0.5}, (1, 4, 6)),
    ], gen, dtype)
    cases.append(causal_leak_case(cls, base, gen, dtype, 2, 7, 4))
    dropout = dropout_case(cls, {**base, "dropout": DROPOUT_P}, gen, dtype)
    dropout.checks = dropout.checks + (eval_matches("eval_out"),)
    cases.append(dropout)
    bad = {"d_in": 6, "d_out": 7, "context_length": 4, "dropout": 0.0, "num_heads": 2}

    def raises(student: Outputs, reference: Outputs) -> str | None:
        got = student.meta.get("raised", {}).get("value")
        if got in ("ValueError", "AssertionError"):
            return None
        return tr("MultiHeadAttention(d_out=7, num_heads=2) must raise ValueError (or AssertionError): d_out must "
                  "be divisible by num_heads; got {got}").format(got=tr("no exception") if not got else got)
    cases.append(_heads_independent(gen, dtype))
    cases += module_invariants(cls, base, gen, dtype)
    cases.append(Case("rejects_indivisible_d_out",
                      [{"op": "raises", "fn": cls, "kwargs": {k: literal_arg(v) for k, v in bad.items()}, "out": "r"},
                       {"op": "output", "key": "raised", "var": "r"}], {}, checks=(raises,), compare=False))
    return cases


def _count(gen, dtype):
    def module_case(name, steps):
        return Case(name, steps + [{"op": "call", "fn": "count_parameters", "args": [var_arg("m")], "out": "n"},
                                   {"op": "output", "key": "out", "var": "n"}], {})
    gpt2_like = [{"op": "new", "cls": "torch.nn.Linear", "args": [literal_arg(768), literal_arg(3 * 768)],
                  "kwargs": {"bias": literal_arg(False)}, "out": "qkv"},
                 {"op": "new", "cls": "torch.nn.Linear", "args": [literal_arg(768), literal_arg(768)], "out": "proj"},
                 {"op": "new", "cls": "torch.nn.Sequential", "args": [var_arg("qkv"), var_arg("proj")], "out": "m"}]
    return [
        module_case("gpt2_small_attention_shapes", gpt2_like),
        module_case("frozen_parameters_excluded", gpt2_like + [{"op": "freeze", "obj": "m", "names": ["1.bias"]}]),
        module_case("embedding", [{"op": "new", "cls": "torch.nn.Embedding", "args": [literal_arg(50), literal_arg(7)],
                                   "out": "m"}]),
        # BatchNorm1d: 2 * 10 parameters and 21 buffer values (running mean and variance, batch count); with
        # the frozen bias, counting buffers (201), frozen parameters (190) or the state_dict (211) all differ (180)
        module_case("buffers_excluded", [
            {"op": "new", "cls": "torch.nn.Linear", "args": [literal_arg(16), literal_arg(10)], "out": "lin"},
            {"op": "new", "cls": "torch.nn.BatchNorm1d", "args": [literal_arg(10)], "out": "bn"},
            {"op": "new", "cls": "torch.nn.Sequential", "args": [var_arg("lin"), var_arg("bn")], "out": "m"},
            {"op": "freeze", "obj": "m", "names": ["0.bias"]}]),
    ]


ITEMS: list[Item] = [
    Item("MultiHeadAttentionWrapper", NOTEBOOK, _mha_wrapper, forbidden=BUILTIN_SDPA + BUILTIN_MHA,
         depends_on=("CausalAttention",)),
    Item("split_heads", NOTEBOOK, _split),
    Item("merge_heads", NOTEBOOK, _merge),
    Item("MultiHeadAttention", NOTEBOOK, _mha, forbidden=BUILTIN_SDPA + BUILTIN_MHA,
         depends_on=("split_heads", "merge_heads")),
    Item("count_parameters", NOTEBOOK, _count, dtypes=(None,), gpu_dtypes=()),
]


# --- known mistakes -------------------------------------------------------------------------------------


def _split_no_transpose(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, num_heads, d // num_heads)


def _split_viewed_as_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.reshape(b, num_heads, n, d // num_heads)


def _merge_no_transpose(x: torch.Tensor) -> torch.Tensor:
    b, h, n, hd = x.shape
    return x.reshape(b, n, h * hd)


def _multi_head_attention_variant(split=solutions.split_heads, merge=solutions.merge_heads, out_proj: bool = True,
                                  dropout: str = "right", **knobs: Any):
    class MultiHeadAttention(solutions.MultiHeadAttention):
        def forward(self, x):
            kw = dict(knobs, scale=scale_for(knobs.get("scale"), x, self))
            q, k, v = (split(lin(x), self.num_heads) for lin in (self.W_query, self.W_key, self.W_value))
            mask = self.mask[:x.shape[1], :x.shape[1]]
            context = merge(attend(q, k, v, mask, dropout=weights_dropout(self, dropout), **kw)[0])
            if dropout == "context":
                context = self.dropout(context)
            out = self.out_proj(context) if out_proj else context
            return self.dropout(out) if dropout == "output" else out
    return {"MultiHeadAttention": MultiHeadAttention}


def _wrapper_variant(cat_dim: int = -1, first_only: bool = False):
    class MultiHeadAttentionWrapper(solutions.MultiHeadAttentionWrapper):
        def forward(self, x):
            heads = [self.heads[0]] * len(self.heads) if first_only else self.heads
            return torch.cat([head(x) for head in heads], dim=cat_dim)
    return {"MultiHeadAttentionWrapper": MultiHeadAttentionWrapper}


@mistake("MultiHeadAttentionWrapper", "concatenated_on_token_axis",
         "the heads' outputs are concatenated along the tokens (dim=1) instead of the features",
         "torch.cat([head(x) for head in self.heads], dim=-1)")
def _wrapper_axis():
    return _wrapper_variant(cat_dim=1)


@mistake("MultiHeadAttentionWrapper", "first_head_repeated",
         "the first head's output is used for every head",
         "call each head: [head(x) for head in self.heads]")
def _wrapper_first():
    return _wrapper_variant(first_only=True)


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
    return _multi_head_attention_variant(out_proj=False)


@mistake("MultiHeadAttention", "split_without_transpose",
         "the projections are split into heads with view(b, h, n, hd) (or view(b, n, h, hd) without "
         "transpose(1, 2)), which mixes tokens into heads",
         "view(b, n, num_heads, head_dim).transpose(1, 2)")
def _mha_split():
    return _multi_head_attention_variant(split=_split_viewed_as_heads)


@mistake("MultiHeadAttention", "merge_without_transpose",
         "the heads are merged without transposing (b, h, n, hd) back to (b, n, h, hd)",
         "context.transpose(1, 2).contiguous().view(b, n, d_out)")
def _mha_merge():
    return _multi_head_attention_variant(merge=_merge_no_transpose)


@mistake("MultiHeadAttention", "scaled_by_d_out",
         "the scores are divided by sqrt(d_out) instead of sqrt(head_dim), the size of one head's keys",
         "divide by keys.shape[-1] ** 0.5 after the split (head_dim = d_out // num_heads)")
def _mha_d_out():
    return _multi_head_attention_variant(scale="d_out")


@mistake("MultiHeadAttention", "head_dim_from_d_in",
         "the head size is computed from d_in (d_in // num_heads) instead of d_out, so the scaling is wrong",
         "head_dim = d_out // num_heads")
def _mha_head_dim():
    return _multi_head_attention_variant(scale="head_dim_from_d_in")


@mistake("MultiHeadAttention", "dropout_active_in_eval",
         "dropout is applied even in eval() mode (F.dropout without training=self.training)",
         "use self.dropout = nn.Dropout(dropout) and call self.dropout(attn_weights)")
def _mha_dropout():
    return _multi_head_attention_variant(dropout="always")


@dropout_never_applied("MultiHeadAttention")
def _mha_dropout_never():
    return _multi_head_attention_variant(dropout="never")


@mistake("MultiHeadAttention", "dropout_on_output",
         "dropout is applied to the output (after out_proj) instead of the attention weights: in train() mode "
         "single output entries are zeroed",
         "apply self.dropout to the attention weights, after the softmax and before the product with the values; "
         "return self.out_proj(context_vec) as it is", predicate=dropout_on_output)
def _mha_dropout_output():
    return _multi_head_attention_variant(dropout="output")


def _dropout_on_context(student: Outputs, reference: Outputs) -> bool:
    """Undo out_proj: the context vectors behind the train() outputs are dropped entry by entry."""
    found = train_runs(student, reference)
    weight, bias = reference.tensor("params.out_proj.weight"), reference.tensor("params.out_proj.bias")
    if found is None or weight is None or bias is None:
        return False
    weight, bias = weight.double(), bias.double()

    def context(out: torch.Tensor) -> torch.Tensor:  # out = context @ weight.T + bias
        return torch.linalg.solve(weight, (out - bias).transpose(-2, -1)).transpose(-2, -1)

    base, runs = found
    tol = 1e-3 * float(base.abs().max())  # solving amplifies rounding: a loose, scale-aware tolerance
    return dropped_entrywise([context(run) for run in runs], context(base), tol, torch.tensor(tol))


@mistake("MultiHeadAttention", "dropout_on_context",
         "dropout is applied to the merged context vectors (before out_proj) instead of the attention weights: in "
         "train() mode single context entries are zeroed",
         "apply self.dropout to the attention weights (b, h, n, n), after the softmax: "
         "attn_weights = self.dropout(attn_weights), then context_vec = attn_weights @ values",
         predicate=_dropout_on_context)
def _mha_dropout_context():
    return _multi_head_attention_variant(dropout="context")


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


mask_not_cut_to_sequence_length("MultiHeadAttention")
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
