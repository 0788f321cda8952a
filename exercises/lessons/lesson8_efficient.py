"""Lesson 8, efficient attention: a sliding-window mask, online-softmax (tiled) attention and FlashAttention
(forward with lse, backward by recomputation, the autograd Function and its wrapper).
Their cases, their items and their known mistakes.

Every item that computes attention may not call a built-in softmax or attention (``forbidden``), and
each has large cases (``max_numel``) on which every legitimate tensor is smaller than ``n_q * n_k``: a
tensor that big is a score matrix (or a mask) the lesson is about never building.
"""

from __future__ import annotations

import math

import torch

import solutions
from exercises.cases import (
    BUILTIN_MHA,
    BUILTIN_SDPA,
    BUILTIN_SOFTMAX,
    DEVICE_ARG,
    QUERY_FEATURE_DIMS,
    QUERY_KEY_DIMS,
    Case,
    Check,
    Item,
    call,
    gradients_present,
    literal_arg,
    rand,
    tensor_arg,
    var_arg,
)
from exercises.compare import Outputs, value_mismatch
from exercises.mistake_core import NEG_INF
from exercises.mistakes import error_hint, mistake

NOTEBOOK = "08_efficient_attention.ipynb"
NO_BUILTIN_ATTENTION = BUILTIN_SOFTMAX + BUILTIN_SDPA + BUILTIN_MHA
LARGE_N = 192  # the large cases: n_q = n_k = 192, d = 8, one sequence, tiles of at most 48


# --- cases ----------------------------------------------------------------------------------------------


def window_rule(window: int) -> Check:
    def check(student: Outputs, reference: Outputs) -> str | None:
        m = student.tensor("out")
        if m is None or m.dtype != torch.bool or m.dim() != 2 or m.shape[0] != m.shape[1]:
            return None
        i, j = torch.meshgrid(torch.arange(m.shape[0]), torch.arange(m.shape[1]), indexing="ij")
        allowed = (i - j >= 0) & (i - j < window)
        if bool((m & ~allowed & (j > i)).any()):
            return "the mask lets a query see a later key: a sliding window is causal too (i - j >= 0)"
        if bool((m & ~allowed).any()):
            return f"the mask reaches further back than the window: query i may see keys i-{window - 1}..i only"
        if bool((~m & allowed).any()):
            return f"the mask hides keys inside the window: query i must see keys i-{window - 1}..i (the diagonal too)"
        return None
    return check


def _sliding(gen, dtype):
    return [Case(f"n{n}_w{w}", call("sliding_window_mask", literal_arg(n), literal_arg(w), device=DEVICE_ARG), {},
                 {"out": QUERY_KEY_DIMS}, (window_rule(w),))
            for n, w in [(6, 1), (6, 3), (8, 8), (5, 10), (1, 1), (9, 2)]]


def _online(gen, dtype):
    cases = []
    for name, batch, nq, nk, d, dv, block, causal in [
        ("block_divides_n", (2,), 16, 16, 8, 8, 4, False),
        ("block_does_not_divide_n", (2,), 10, 10, 4, 6, 3, False),
        ("causal", (2, 2), 12, 12, 8, 8, 5, True),
        ("causal_block_1", (1,), 6, 6, 4, 4, 1, True),
        ("nq_ne_nk", (3,), 5, 11, 4, 2, 4, False),
        ("causal_nq_lt_nk", (2,), 5, 11, 4, 3, 3, True),  # top-left: query i sees keys j <= i
        ("causal_nq_gt_nk", (2,), 9, 4, 4, 3, 2, True),
        ("block_larger_than_n", (), 7, 7, 4, 4, 64, True),
        ("single_token", (), 1, 1, 3, 3, 2, False),
        ("large_no_score_matrix", (1,), LARGE_N, LARGE_N, 8, 8, 48, True),
    ]:
        inputs = {"q": rand(gen, *batch, nq, d, dtype=dtype), "k": rand(gen, *batch, nk, d, dtype=dtype),
                  "v": rand(gen, *batch, nk, dv, dtype=dtype)}
        program = call("online_softmax_attention", tensor_arg("q"), tensor_arg("k"), tensor_arg("v"),
                       block_size=literal_arg(block), causal=literal_arg(causal))
        cases.append(Case(name, program, inputs, {"out": ("batch",) * len(batch) + QUERY_FEATURE_DIMS},
                          max_numel=nq * nk - 1 if name.startswith("large") else None))
    return cases


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
GRADIENT_SHAPES = [s for s in FLASH_SHAPES if s[0] in
                   ("tiles_do_not_divide_n", "causal", "causal_nq_lt_nk", "causal_nq_gt_nk", "tiles_larger_than_n",
                    "large_causal_no_score_matrix")]


def _qkv(gen, batch, nq, nk, d, dv, dtype) -> dict[str, torch.Tensor]:
    return {"q": rand(gen, *batch, nq, d, dtype=dtype), "k": rand(gen, *batch, nk, d, dtype=dtype),
            "v": rand(gen, *batch, nk, dv, dtype=dtype)}


def _limit(name: str, nq: int, nk: int) -> int | None:
    return nq * nk - 1 if name.startswith("large") else None


def _settings(causal: bool, block_q: int, block_k: int) -> dict[str, dict]:
    return {"causal": literal_arg(causal), "block_q": literal_arg(block_q), "block_k": literal_arg(block_k)}


def _flash_forward(gen, dtype):
    cases = []
    for name, batch, nq, nk, d, dv, bq, bk, causal in FLASH_SHAPES:
        program = call("flash_attention_forward", tensor_arg("q"), tensor_arg("k"), tensor_arg("v"),
                       **_settings(causal, bq, bk))
        dims = {"out.0": ("batch",) * len(batch) + QUERY_FEATURE_DIMS, "out.1": ("batch",) * len(batch) + ("query",)}
        cases.append(Case(name, program, _qkv(gen, batch, nq, nk, d, dv, dtype), dims,
                          max_numel=_limit(name, nq, nk)))
    return cases


def _flash_backward(gen, dtype):
    """The forward pass's ``out`` and ``lse`` come from the reference: this item is graded on its own."""
    cases = []
    for name, batch, nq, nk, d, dv, bq, bk, causal in FLASH_SHAPES:
        inputs = _qkv(gen, batch, nq, nk, d, dv, dtype)
        inputs["grad_out"] = rand(gen, *batch, nq, dv, dtype=dtype)
        inputs["out"], inputs["lse"] = solutions.flash_attention_forward(inputs["q"], inputs["k"], inputs["v"],
                                                                         causal, bq, bk)
        program = call("flash_attention_backward", *(tensor_arg(key) for key in ("q", "k", "v", "out", "lse")),
                       tensor_arg("grad_out"), **_settings(causal, bq, bk))
        dims = {"out.0": ("batch",) * len(batch) + QUERY_FEATURE_DIMS,
                "out.1": ("batch",) * len(batch) + ("key", "feature"),
                "out.2": ("batch",) * len(batch) + ("key", "feature")}
        cases.append(Case(name, program, inputs, dims, max_numel=_limit(name, nq, nk)))
    return cases


def function_node(student: Outputs, reference: Outputs) -> str | None:
    """The output must come out of a custom autograd Function (its node is ``<Class>Backward``, no digit)."""
    kind = student.meta.get("node", {}).get("pytype", "")
    if kind == reference.meta.get("node", {}).get("pytype") or (kind.endswith("Backward") and kind != "NoneType"):
        return None
    return (f"the output's grad_fn is {kind}, a built-in autograd node: autograd through the tiled loop saves "
            "every tile's weights for backward (O(n_q * n_k) memory in all); return "
            "FlashAttentionFunction.apply(q, k, v, causal, block_q, block_k) so that backward recomputes them "
            "from lse")


def _gradient_steps(call_steps: list[dict]) -> list[dict]:
    """Leaves ``q, k, v``; ``call_steps`` put the output in ``y``; then its autograd node, and the gradients of
    ``(y * grad_weights).sum()`` with respect to each leaf.

    The gradients come from ``torch.autograd.grad`` calls rather than a ``backward`` step: the grader grades
    an item again with reference stand-ins for its failed dependencies (``Item.depends_on``) but leaves out
    programs with a ``backward`` step, because a stand-in returns tensors without a graph. Here the graph is
    the student's Function node itself (a stand-in inside its forward or backward needs none), so these
    cases of ``FlashAttentionFunction`` can be graded again: a right Function over a wrong
    ``flash_attention_forward`` earns its points, and its own mistakes are named even when the two functions
    under it are wrong.
    """
    steps = [{"op": "leaf", "tensor": key, "out": f"leaf_{key}"} for key in "qkv"] + call_steps
    steps += [{"op": "output", "key": "out", "var": "y"},
              {"op": "attr", "obj": "y", "name": "grad_fn", "out": "node"},
              {"op": "output", "key": "node", "var": "node"}]
    for key in "qkv":
        steps += [{"op": "call", "fn": "torch.autograd.grad", "args": [var_arg("y"), var_arg(f"leaf_{key}")],
                   "kwargs": {"grad_outputs": tensor_arg("grad_weights"), "retain_graph": literal_arg(True),
                              "allow_unused": literal_arg(True)}, "out": f"g_{key}"},
                  {"op": "output", "key": f"grad_{key}", "var": f"g_{key}"}]
    return steps


def _apply_steps(causal: bool, block_q: int, block_k: int) -> list[dict]:
    """``y = FlashAttentionFunction.apply(leaf_q, leaf_k, leaf_v, causal, block_q, block_k)``."""
    return [{"op": "attr", "obj": "FlashAttentionFunction", "name": "apply", "out": "apply"},
            {"op": "call", "fn": "apply", "args": [var_arg("leaf_q"), var_arg("leaf_k"), var_arg("leaf_v"),
                                                   literal_arg(causal), literal_arg(block_q), literal_arg(block_k)],
             "out": "y"}]


def _gradient_case(gen, dtype, shape, call_steps: list[dict]) -> Case:
    name, batch, nq, nk, d, dv, bq, bk, causal = shape
    inputs = {**_qkv(gen, batch, nq, nk, d, dv, dtype), "grad_weights": rand(gen, *batch, nq, dv, dtype=dtype)}
    grads = {"grad_q": ("batch",) * len(batch) + QUERY_FEATURE_DIMS}
    grads |= {f"grad_{key}": ("batch",) * len(batch) + ("key", "feature") for key in "kv"}
    return Case(f"gradients_{name}", _gradient_steps(call_steps), inputs,
                {"out": ("batch",) * len(batch) + QUERY_FEATURE_DIMS, **grads}, (function_node, gradients_present),
                max_numel=_limit(name, nq, nk))


def saves_only_inputs_out_lse(student: Outputs, reference: Outputs) -> str | None:
    """Every tensor the student's Function saved must be one of the reference's (q, k, v, out, lse), in any order."""
    theirs = [k for k, m in student.meta.items() if k.startswith("saved.") and m.get("pytype") == "Tensor"]
    ours = [reference.tensors[k] for k, m in reference.meta.items()
            if k.startswith("saved.") and m.get("pytype") == "Tensor"]
    if "saved" not in student.meta:
        return None
    for key in theirs:
        got = student.tensors[key]
        if not any(got.numel() == t.numel() and got.dtype == t.dtype
                   and value_mismatch(key, got.reshape(t.shape), t) is None for t in ours):
            return (f"ctx.save_for_backward saved a tensor of shape {tuple(got.shape)} that is none of q, k, v, out "
                    "and lse: save only those (O(n d) memory) and recompute the attention weights in backward")
    return None


def output_matches(key: str) -> Check:
    def check(student: Outputs, reference: Outputs) -> str | None:
        got = student.tensor(key)
        if got is None or got.shape != reference.tensors[key].shape:
            return f"`{key}` missing or of the wrong shape: expected {tuple(reference.tensors[key].shape)}"
        found = value_mismatch(key, got, reference.tensors[key])
        return None if found is None else found.message
    return check


def _flash_function(gen, dtype):
    name, batch, nq, nk, d, dv, bq, bk, causal = FLASH_SHAPES[2]
    steps = [{"op": "leaf", "tensor": key, "out": f"leaf_{key}"} for key in "qkv"] + _apply_steps(causal, bq, bk)
    steps += [{"op": "output", "key": "out", "var": "y"},
              {"op": "attr", "obj": "y", "name": "grad_fn", "out": "node"},
              {"op": "attr", "obj": "node", "name": "saved_tensors", "out": "saved"},
              {"op": "output", "key": "saved", "var": "saved"}]
    cases = [Case("saves_only_q_k_v_out_lse", steps, _qkv(gen, batch, nq, nk, d, dv, dtype),
                  checks=(output_matches("out"), saves_only_inputs_out_lse), compare=False)]
    return cases + [_gradient_case(gen, dtype, shape, _apply_steps(shape[-1], shape[-3], shape[-2]))
                    for shape in GRADIENT_SHAPES]


def _flash_attention(gen, dtype):
    """Case order matters for messages (the first failing cases are shown): first a non-causal gradient case
    (the autograd node; right even over a causal-only slip further down), then the forward pass alone."""
    cases = []
    # the forward pass alone, on inputs that need no gradient
    for name, batch, nq, nk, d, dv, bq, bk, causal in [FLASH_SHAPES[2], FLASH_SHAPES[6], FLASH_SHAPES[10]]:
        settings = [literal_arg(causal), literal_arg(bq), literal_arg(bk)]
        program = [{"op": "call", "fn": "flash_attention", "out": "y",
                    "args": [tensor_arg(key) for key in "qkv"] + (settings if name.startswith("causal_nq") else []),
                    "kwargs": {} if name.startswith("causal_nq") else _settings(causal, bq, bk)},
                   {"op": "output", "key": "out", "var": "y"}]
        cases.append(Case(f"forward_{name}", program, _qkv(gen, batch, nq, nk, d, dv, dtype),
                          {"out": ("batch",) * len(batch) + QUERY_FEATURE_DIMS}, max_numel=_limit(name, nq, nk)))
    gradients = []
    for shape in GRADIENT_SHAPES:
        name, batch, nq, nk, d, dv, bq, bk, causal = shape
        args = [var_arg(f"leaf_{key}") for key in "qkv"]
        if name.startswith("causal_nq"):  # positional settings
            call_step = {"op": "call", "fn": "flash_attention", "out": "y",
                         "args": args + [literal_arg(causal), literal_arg(bq), literal_arg(bk)]}
        else:
            call_step = {"op": "call", "fn": "flash_attention", "args": args, "out": "y",
                         "kwargs": _settings(causal, bq, bk)}
        gradients.append(_gradient_case(gen, dtype, shape, [call_step]))
    cases = gradients[:1] + cases + gradients[1:]  # GRADIENT_SHAPES[0] is not causal
    # the defaults: not causal, tiles of 64 (70 queries: two query tiles)
    inputs = {**_qkv(gen, (2,), 70, 70, 4, 4, dtype), "grad_weights": rand(gen, 2, 70, 4, dtype=dtype)}
    call_step = {"op": "call", "fn": "flash_attention", "args": [var_arg(f"leaf_{key}") for key in "qkv"], "out": "y"}
    cases.append(Case("gradients_default_settings", _gradient_steps([call_step]), inputs,
                      {"out": ("batch",) + QUERY_FEATURE_DIMS}, (function_node, gradients_present)))
    return cases


ITEMS: list[Item] = [
    Item("sliding_window_mask", NOTEBOOK, _sliding, dtypes=(None,), gpu_dtypes=()),
    Item("online_softmax_attention", NOTEBOOK, _online, forbidden=NO_BUILTIN_ATTENTION),
    Item("flash_attention_forward", NOTEBOOK, _flash_forward, forbidden=NO_BUILTIN_ATTENTION),
    Item("flash_attention_backward", NOTEBOOK, _flash_backward, forbidden=NO_BUILTIN_ATTENTION),
    Item("FlashAttentionFunction", NOTEBOOK, _flash_function, forbidden=NO_BUILTIN_ATTENTION,
         depends_on=("flash_attention_forward", "flash_attention_backward")),
    # No depends_on: FlashAttentionFunction, what it calls, cannot be replaced by a stand-in (those are
    # functions and nn.Modules), and with only the two functions under it replaced, the mistake of returning
    # flash_attention_forward(...)[0] could no longer be shown (a stand-in's output has no graph)
    Item("flash_attention", NOTEBOOK, _flash_attention, forbidden=NO_BUILTIN_ATTENTION),
]


# --- known mistakes -------------------------------------------------------------------------------------


def _window_variant(rule):
    def sliding_window_mask(num_tokens, window_size, device=None):
        positions = torch.arange(num_tokens, device=device)
        return rule(positions[:, None] - positions[None, :], window_size)
    return {"sliding_window_mask": sliding_window_mask}


@mistake("sliding_window_mask", "window_one_too_wide",
         "the window is one token too wide: i - j <= window_size lets a query see window_size + 1 tokens",
         "keep 0 <= i - j < window_size (the query itself counts)")
def _window_wide():
    return _window_variant(lambda d, w: (d >= 0) & (d <= w))


@mistake("sliding_window_mask", "window_one_too_narrow",
         "the window is one token too narrow: a query sees only window_size - 1 tokens",
         "keep 0 <= i - j < window_size (the query itself counts)")
def _window_narrow():
    return _window_variant(lambda d, w: (d >= 0) & (d < w - 1))


@mistake("sliding_window_mask", "not_causal",
         "the window is symmetric (|i - j| < window_size): queries see later tokens too",
         "require i - j >= 0 as well")
def _window_symmetric():
    return _window_variant(lambda d, w: d.abs() < w)


@mistake("sliding_window_mask", "window_ignored",
         "the mask is only causal: window_size is ignored",
         "add the condition i - j < window_size")
def _window_ignored():
    return _window_variant(lambda d, w: d >= 0)


def _online_variant(*, rescale_sum: bool = True, rescale_acc: bool = True, use_causal: bool = True,
                    scale: bool = True, hide_diagonal: bool = False, drop_partial_block: bool = False,
                    bottom_right: bool = False):
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
    return _online_variant(rescale_sum=False)


@mistake("online_softmax_attention", "accumulator_not_rescaled",
         "the output accumulator is not rescaled by exp(m_old - m_new) when the maximum grows",
         "acc = exp(m_old - m_new) * acc + p @ v_block")
def _online_acc():
    return _online_variant(rescale_acc=False)


@mistake("online_softmax_attention", "causal_ignored",
         "causal=True is ignored: queries attend to later keys",
         "in each block, fill scores where key position > query position with -inf")
def _online_causal():
    return _online_variant(use_causal=False)


@mistake("online_softmax_attention", "no_scaling",
         "the scores are not divided by sqrt(d)",
         "scores = q @ k_block^T / d ** 0.5")
def _online_scale():
    return _online_variant(scale=False)


@mistake("online_softmax_attention", "causal_hides_diagonal",
         "the causal mask also hides the diagonal (key >= query), so the first query has no key (NaN)",
         "mask only later keys: key position > query position")
def _online_diag():
    return _online_variant(hide_diagonal=True)


@mistake("online_softmax_attention", "last_partial_block_dropped",
         "the last block is skipped when block_size does not divide n_k (or exceeds it)",
         "loop for start in range(0, n_k, block_size) with end = min(start + block_size, n_k)")
def _online_partial():
    return _online_variant(drop_partial_block=True)


@mistake("online_softmax_attention", "causal_aligned_bottom_right",
         "the causal mask is aligned bottom-right (query i sees keys j <= i + n_k - n_q): with n_q != n_k the "
         "queries see the wrong keys (and with n_q > n_k the first ones none at all, NaN)",
         "align top-left, like scaled_dot_product_attention(is_causal=True): mask where key position j > "
         "query position i, with no offset")
def _online_bottom_right():
    return _online_variant(bottom_right=True)


# --- FlashAttention: forward ----------------------------------------------------------------------------


def _tile_update(m, l, acc, s, v_tile, rescale_sum=True):
    """One key tile of the online softmax (what the reference does), for the variants below."""
    m_new = torch.maximum(m, s.amax(-1, keepdim=True))
    m_safe = torch.where(m_new == NEG_INF, torch.zeros_like(m_new), m_new)
    p = torch.exp(s - m_safe)
    correction = torch.exp(m - m_safe)
    l = (l * correction if rescale_sum else l) + p.sum(-1, keepdim=True)
    acc = acc * correction + (p @ v_tile if v_tile is not None else 0)
    return m_new, l, acc


def _forward_variant(*, lse_max: bool = True, lse_unscaled_max: bool = False, normalise: bool = True,
                     all_query_tiles: bool = True, skip_from_first_query: bool = False, rescale_sum: bool = True,
                     use_causal: bool = True, scale: bool = True):
    def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64):
        causal = causal and use_causal
        n_q, d = q.shape[-2:]
        n_k, d_v = v.shape[-2:]
        batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
        factor = 1 / d ** 0.5 if scale else 1.0
        out = q.new_zeros((*batch, n_q, d_v))
        lse = q.new_zeros((*batch, n_q))
        for qs in range(0, n_q if all_query_tiles else 1, block_q):
            qe = min(qs + block_q, n_q)
            m = q.new_full((*batch, qe - qs, 1), NEG_INF)
            l = q.new_zeros((*batch, qe - qs, 1))
            acc = q.new_zeros((*batch, qe - qs, d_v))
            query_pos = torch.arange(qs, qe, device=q.device)[:, None]
            for ks in range(0, n_k, block_k):
                if causal and ks > (qs if skip_from_first_query else qe - 1):
                    break
                ke = min(ks + block_k, n_k)
                s = q[..., qs:qe, :] @ k[..., ks:ke, :].transpose(-2, -1) * factor
                if causal:
                    s = s.masked_fill(torch.arange(ks, ke, device=q.device)[None, :] > query_pos, NEG_INF)
                m, l, acc = _tile_update(m, l, acc, s, v[..., ks:ke, :], rescale_sum)
            out[..., qs:qe, :] = acc / l if normalise else acc
            m_used = m / factor if lse_unscaled_max else m
            lse[..., qs:qe] = ((m_used if lse_max else 0) + torch.log(l)).squeeze(-1)
        return out, lse
    return {"flash_attention_forward": flash_attention_forward}


@mistake("flash_attention_forward", "lse_without_max",
         "lse is log(l) without the running maximum added back: l was summed as exp(s - m)",
         "lse = m + log(l): the log of sum_j exp(s_j) = m + log(sum_j exp(s_j - m))")
def _fwd_lse_max():
    return _forward_variant(lse_max=False)


@mistake("flash_attention_forward", "lse_max_of_unscaled_scores",
         "lse adds back the maximum of the unscaled scores q k^T (not divided by sqrt(d)); out is right",
         "keep m in the units of the scaled scores s = q k^T / sqrt(d), and lse = m + log(l)")
def _fwd_lse_unscaled():
    return _forward_variant(lse_unscaled_max=True)


@mistake("flash_attention_forward", "no_final_normalisation",
         "out is the unnormalised accumulator: it was never divided by the running sum l",
         "after the last key tile, out = acc / l")
def _fwd_no_norm():
    return _forward_variant(normalise=False)


@mistake("flash_attention_forward", "only_first_query_tile",
         "only the first tile of queries is computed: the other rows of out and lse stay 0",
         "loop over the query tiles: for qs in range(0, n_q, block_q), with qe = min(qs + block_q, n_q)")
def _fwd_first_tile():
    return _forward_variant(all_query_tiles=False)


@mistake("flash_attention_forward", "causal_skip_from_first_query",
         "causal: key tiles are skipped once they start after the tile's FIRST query (ks > qs), so the later "
         "queries of the tile lose keys they may see",
         "a key tile can be skipped only when it starts after the tile's LAST query: ks > qe - 1")
def _fwd_skip():
    return _forward_variant(skip_from_first_query=True)


@mistake("flash_attention_forward", "running_sum_not_rescaled",
         "the running sum l is not rescaled by exp(m_old - m_new) when the maximum grows",
         "l = exp(m_old - m_new) * l + p.sum(-1, keepdim=True)")
def _fwd_sum():
    return _forward_variant(rescale_sum=False)


@mistake("flash_attention_forward", "causal_ignored",
         "causal=True is ignored: queries attend to later keys",
         "in each tile, fill the scores where key position > query position with -inf")
def _fwd_causal():
    return _forward_variant(use_causal=False)


@mistake("flash_attention_forward", "no_scaling",
         "the scores are not divided by sqrt(d)",
         "s = q_tile @ k_tile^T / d ** 0.5 (and lse is the logsumexp of these scaled scores)")
def _fwd_scale():
    return _forward_variant(scale=False)


# --- FlashAttention: backward ---------------------------------------------------------------------------


def _backward_variant(*, d_from_grad_out: bool = False, subtract_d: bool = True, scale_dk: bool = True,
                      scale_dq: bool = True, tile_max_weights: bool = False, use_causal: bool = True):
    def flash_attention_backward(q, k, v, out, lse, grad_out, causal=False, block_q=64, block_k=64):
        causal = causal and use_causal
        n_q, d = q.shape[-2:]
        n_k = k.shape[-2]
        factor = 1 / d ** 0.5
        D = grad_out.sum(-1) if d_from_grad_out else (grad_out * out).sum(-1)
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for ks in range(0, n_k, block_k):
            ke = min(ks + block_k, n_k)
            for qs in range(0, n_q, block_q):
                qe = min(qs + block_q, n_q)
                s = q[..., qs:qe, :] @ k[..., ks:ke, :].transpose(-2, -1) * factor
                if causal:
                    key_pos, query_pos = torch.arange(ks, ke, device=q.device), torch.arange(qs, qe, device=q.device)
                    future = key_pos[None, :] > query_pos[:, None]
                    s = s.masked_fill(future, NEG_INF)
                if tile_max_weights:
                    top = s.amax(-1, keepdim=True)
                    p = torch.exp(s - torch.where(top == NEG_INF, torch.zeros_like(top), top))
                else:
                    p = torch.exp(s - lse[..., qs:qe, None])
                do = grad_out[..., qs:qe, :]
                dv[..., ks:ke, :] += p.transpose(-2, -1) @ do
                dp = do @ v[..., ks:ke, :].transpose(-2, -1)
                ds = p * (dp - D[..., qs:qe, None]) if subtract_d else p * dp
                dq[..., qs:qe, :] += ds @ k[..., ks:ke, :] * (factor if scale_dq else 1.0)
                dk[..., ks:ke, :] += ds.transpose(-2, -1) @ q[..., qs:qe, :] * (factor if scale_dk else 1.0)
        return dq, dk, dv
    return {"flash_attention_backward": flash_attention_backward}


@mistake("flash_attention_backward", "D_from_grad_out_only",
         "D is the row sum of grad_out alone; it must be rowsum(grad_out * out) (= sum_j P_ij dP_ij)",
         "D = (grad_out * out).sum(-1): the softmax's backward subtracts each row's P-weighted average of dP")
def _bwd_d():
    return _backward_variant(d_from_grad_out=True)


@mistake("flash_attention_backward", "dS_without_D",
         "dS = P * dP: the softmax's backward is missing its - D term (dq and dk are wrong, dv is right)",
         "dS = P * (dP - D[..., None]) with D = rowsum(grad_out * out)")
def _bwd_no_d():
    return _backward_variant(subtract_d=False)


@mistake("flash_attention_backward", "dk_not_scaled",
         "dk is missing the factor 1/sqrt(d) (the scores were q k^T / sqrt(d))",
         "dk += dS^T @ q_tile / sqrt(d)")
def _bwd_dk():
    return _backward_variant(scale_dk=False)


@mistake("flash_attention_backward", "dq_not_scaled",
         "dq is missing the factor 1/sqrt(d) (the scores were q k^T / sqrt(d))",
         "dq += dS @ k_tile / sqrt(d)")
def _bwd_dq():
    return _backward_variant(scale_dq=False)


@mistake("flash_attention_backward", "weights_from_tile_maximum",
         "the weights are recomputed as exp(S - max of the tile), which is not normalised: use lse",
         "P = exp(S - lse[..., None]): lse holds each row's max and sum at once, so P comes out normalised")
def _bwd_tile_max():
    return _backward_variant(tile_max_weights=True)


@mistake("flash_attention_backward", "causal_ignored",
         "causal=True is ignored in backward: the recomputed weights give later keys a share",
         "mask the recomputed scores exactly as in forward (key position > query position -> -inf) before exp")
def _bwd_causal():
    return _backward_variant(use_causal=False)


# --- FlashAttentionFunction and flash_attention ------------------------------------------------------


def _function_variant(*, ignore_grad_out: bool = False, save_weights: bool = False, keep_causal: bool = True):
    class FlashAttentionFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, causal=False, block_q=64, block_k=64):
            out, lse = solutions.flash_attention_forward(q, k, v, causal, block_q, block_k)
            saved = [q, k, v, out, lse]
            if save_weights:  # the whole (n_q, n_k) weight matrix
                s = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
                if causal:
                    s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=q.device).triu(1), NEG_INF)
                saved.append(torch.exp(s - lse[..., None]))
            ctx.save_for_backward(*saved)
            ctx.settings = (causal and keep_causal, block_q, block_k)
            return out

        @staticmethod
        def backward(ctx, grad_out):
            q, k, v, out, lse = ctx.saved_tensors[:5]
            grad_out = torch.ones_like(grad_out) if ignore_grad_out else grad_out
            return *solutions.flash_attention_backward(q, k, v, out, lse, grad_out, *ctx.settings), None, None, None
    return {"FlashAttentionFunction": FlashAttentionFunction}


def _saves_large(student: Outputs, reference: Outputs) -> bool:
    """A saved tensor with at least n_q * n_k elements (n_q from out, n_k from k = saved.1)."""
    out, k = reference.tensors.get("out"), reference.tensors.get("saved.1")
    if out is None or k is None:
        return False
    return any(key.startswith("saved.") and t.numel() >= out.shape[-2] * k.shape[-2] * math.prod(out.shape[:-2])
               for key, t in student.tensors.items())


@mistake("FlashAttentionFunction", "ignores_grad_out",
         "backward ignores grad_out (it uses ones): the gradients are those of out.sum(), not of the loss",
         "pass grad_out, the argument of backward, on to flash_attention_backward")
def _fn_grad_out():
    return _function_variant(ignore_grad_out=True)


@mistake("FlashAttentionFunction", "saves_attention_weights",
         "forward saves the (n_q, n_k) attention weights for backward: that is the O(n^2) memory FlashAttention "
         "avoids",
         "ctx.save_for_backward(q, k, v, out, lse) only; backward recomputes the weights tile by tile from lse",
         predicate=_saves_large)
def _fn_saves_p():
    return _function_variant(save_weights=True)


@mistake("FlashAttentionFunction", "causal_not_passed_to_backward",
         "backward does not use the forward's causal flag (it runs the non-causal backward)",
         "store causal (and the block sizes) on ctx in forward: ctx.causal = causal; use them in backward")
def _fn_causal():
    return _function_variant(keep_causal=False)


def _wrapper_variant(*, keep_causal: bool = True, through_function: bool = True):
    def flash_attention(q, k, v, causal=False, block_q=64, block_k=64):
        causal = causal and keep_causal
        if through_function:
            return solutions.FlashAttentionFunction.apply(q, k, v, causal, block_q, block_k)
        return solutions.flash_attention_forward(q, k, v, causal, block_q, block_k)[0]
    return {"flash_attention": flash_attention}


@mistake("flash_attention", "causal_ignored",
         "flash_attention does not pass causal on: the attention is never causal",
         "return FlashAttentionFunction.apply(q, k, v, causal, block_q, block_k)")
def _wrap_causal():
    return _wrapper_variant(keep_causal=False)


@mistake("flash_attention", "autograd_through_the_forward",
         "flash_attention returns flash_attention_forward(...)[0]: the gradients are right, but autograd saves "
         "every tile's weights for backward (O(n_q * n_k) memory in all) instead of recomputing them",
         "return FlashAttentionFunction.apply(q, k, v, causal, block_q, block_k)")
def _wrap_autograd():
    return _wrapper_variant(through_function=False)


error_hint("flash_attention", "output_without_graph", r"does not require grad and does not have a grad_fn",
           "the output carries no autograd graph: it was computed under torch.no_grad() (or detached), so no "
           "gradient can reach q, k and v",
           "return FlashAttentionFunction.apply(...) as it is: autograd records the Function's node by itself")
