"""Lesson 10, efficient attention II: FlashAttention's backward pass by recomputation, the autograd Function
and its wrapper. Their cases, their items and their known mistakes.

Every item may not call a built-in softmax or attention (``forbidden``), and each has large cases
(``max_numel``) on which every legitimate tensor is smaller than ``n_q * n_k``: a tensor that big is a
score or weight matrix the lesson is about never building, nor keeping for backward.
"""

from __future__ import annotations

import math

import torch

import solutions
from exercises.cases import (
    QUERY_FEATURE_DIMS,
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
from exercises.flash_shapes import FLASH_SHAPES, NO_BUILTIN_ATTENTION, limit, qkv, settings
from exercises.i18n import tr
from exercises.mistake_core import NEG_INF
from exercises.mistakes import error_hint, mistake

NOTEBOOK = "10_flash_attention_backward.ipynb"
GRADIENT_SHAPES = [s for s in FLASH_SHAPES if s[0] in
                   ("tiles_do_not_divide_n", "causal", "causal_nq_lt_nk", "causal_nq_gt_nk", "tiles_larger_than_n",
                    "large_causal_no_score_matrix")]


# --- cases ----------------------------------------------------------------------------------------------


def _flash_backward(gen, dtype):
    """The forward pass's ``out`` and ``lse`` come from the reference: this item is graded on its own."""
    cases = []
    for name, batch, nq, nk, d, dv, bq, bk, causal in FLASH_SHAPES:
        inputs = qkv(gen, batch, nq, nk, d, dv, dtype)
        inputs["grad_out"] = rand(gen, *batch, nq, dv, dtype=dtype)
        inputs["out"], inputs["lse"] = solutions.flash_attention_forward(inputs["q"], inputs["k"], inputs["v"],
                                                                         causal, bq, bk)
        program = call("flash_attention_backward", *(tensor_arg(key) for key in ("q", "k", "v", "out", "lse")),
                       tensor_arg("grad_out"), **settings(causal, bq, bk))
        dims = {"out.0": ("batch",) * len(batch) + QUERY_FEATURE_DIMS,
                "out.1": ("batch",) * len(batch) + ("key", "feature"),
                "out.2": ("batch",) * len(batch) + ("key", "feature")}
        cases.append(Case(name, program, inputs, dims, max_numel=limit(name, nq, nk)))
    return cases


def function_node(student: Outputs, reference: Outputs) -> str | None:
    """The output must come out of a custom autograd Function (its node is ``<Class>Backward``, no digit)."""
    kind = student.meta.get("node", {}).get("pytype", "")
    if kind == reference.meta.get("node", {}).get("pytype") or (kind.endswith("Backward") and kind != "NoneType"):
        return None
    return tr("the output's grad_fn is {kind}, a built-in autograd node: autograd through the tiled loop saves "
              "every tile's weights for backward (O(n_q * n_k) memory in all); return "
              "FlashAttentionFunction.apply(q, k, v, causal, block_q, block_k) so that backward recomputes them "
              "from lse").format(kind=kind)


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
    inputs = {**qkv(gen, batch, nq, nk, d, dv, dtype), "grad_weights": rand(gen, *batch, nq, dv, dtype=dtype)}
    grads = {"grad_q": ("batch",) * len(batch) + QUERY_FEATURE_DIMS}
    grads |= {f"grad_{key}": ("batch",) * len(batch) + ("key", "feature") for key in "kv"}
    return Case(f"gradients_{name}", _gradient_steps(call_steps), inputs,
                {"out": ("batch",) * len(batch) + QUERY_FEATURE_DIMS, **grads}, (function_node, gradients_present),
                max_numel=limit(name, nq, nk))


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
            return tr("ctx.save_for_backward saved a tensor of shape {shape} that is none of q, k, v, out and lse: "
                      "save only those (O(n d) memory) and recompute the attention weights in backward").format(
                shape=tuple(got.shape))
    return None


def output_matches(key: str) -> Check:
    def check(student: Outputs, reference: Outputs) -> str | None:
        got = student.tensor(key)
        if got is None or got.shape != reference.tensors[key].shape:
            return tr("`{key}` missing or of the wrong shape: expected {shape}").format(
                key=key, shape=tuple(reference.tensors[key].shape))
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
    cases = [Case("saves_only_q_k_v_out_lse", steps, qkv(gen, batch, nq, nk, d, dv, dtype),
                  checks=(output_matches("out"), saves_only_inputs_out_lse), compare=False)]
    return cases + [_gradient_case(gen, dtype, shape, _apply_steps(shape[-1], shape[-3], shape[-2]))
                    for shape in GRADIENT_SHAPES]


def _flash_attention(gen, dtype):
    """Case order matters for messages (the first failing cases are shown): first a non-causal gradient case
    (the autograd node; right even over a causal-only slip further down), then the forward pass alone."""
    cases = []
    # the forward pass alone, on inputs that need no gradient
    for name, batch, nq, nk, d, dv, bq, bk, causal in [FLASH_SHAPES[2], FLASH_SHAPES[6], FLASH_SHAPES[10]]:
        positional = [literal_arg(causal), literal_arg(bq), literal_arg(bk)]
        program = [{"op": "call", "fn": "flash_attention", "out": "y",
                    "args": [tensor_arg(key) for key in "qkv"] + (positional if name.startswith("causal_nq") else []),
                    "kwargs": {} if name.startswith("causal_nq") else settings(causal, bq, bk)},
                   {"op": "output", "key": "out", "var": "y"}]
        cases.append(Case(f"forward_{name}", program, qkv(gen, batch, nq, nk, d, dv, dtype),
                          {"out": ("batch",) * len(batch) + QUERY_FEATURE_DIMS}, max_numel=limit(name, nq, nk)))
    gradients = []
    for shape in GRADIENT_SHAPES:
        name, batch, nq, nk, d, dv, bq, bk, causal = shape
        args = [var_arg(f"leaf_{key}") for key in "qkv"]
        if name.startswith("causal_nq"):  # positional settings
            call_step = {"op": "call", "fn": "flash_attention", "out": "y",
                         "args": args + [literal_arg(causal), literal_arg(bq), literal_arg(bk)]}
        else:
            call_step = {"op": "call", "fn": "flash_attention", "args": args, "out": "y",
                         "kwargs": settings(causal, bq, bk)}
        gradients.append(_gradient_case(gen, dtype, shape, [call_step]))
    cases = gradients[:1] + cases + gradients[1:]  # GRADIENT_SHAPES[0] is not causal
    # the defaults: not causal, tiles of 64 (70 queries: two query tiles)
    inputs = {**qkv(gen, (2,), 70, 70, 4, 4, dtype), "grad_weights": rand(gen, 2, 70, 4, dtype=dtype)}
    call_step = {"op": "call", "fn": "flash_attention", "args": [var_arg(f"leaf_{key}") for key in "qkv"], "out": "y"}
    cases.append(Case("gradients_default_settings", _gradient_steps([call_step]), inputs,
                      {"out": ("batch",) + QUERY_FEATURE_DIMS}, (function_node, gradients_present)))
    return cases



ITEMS: list[Item] = [
    Item("flash_attention_backward", NOTEBOOK, _flash_backward, forbidden=NO_BUILTIN_ATTENTION),
    Item("FlashAttentionFunction", NOTEBOOK, _flash_function, forbidden=NO_BUILTIN_ATTENTION,
         depends_on=("flash_attention_forward", "flash_attention_backward")),
    # No depends_on: FlashAttentionFunction, what it calls, cannot be replaced by a stand-in (those are
    # functions and nn.Modules), and with only the two functions under it replaced, the mistake of returning
    # flash_attention_forward(...)[0] could no longer be shown (a stand-in's output has no graph)
    Item("flash_attention", NOTEBOOK, _flash_attention, forbidden=NO_BUILTIN_ATTENTION),
]



# --- FlashAttention: backward ---------------------------------------------------------------------------


def _backward_variant(*, d_from_grad_out: bool = False, subtract_d: bool = True, scale_dk: bool = True,
                      scale_dq: bool = True, tile_max_weights: bool = False, use_causal: bool = True,
                      overwrite_dq: bool = False, unscaled_recompute: bool = False):
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
                s = q[..., qs:qe, :] @ k[..., ks:ke, :].transpose(-2, -1) * (1.0 if unscaled_recompute else factor)
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
                dq_share = ds @ k[..., ks:ke, :] * (factor if scale_dq else 1.0)
                if overwrite_dq:  # the last key tile's share only
                    dq[..., qs:qe, :] = dq_share
                else:
                    dq[..., qs:qe, :] += dq_share
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


@mistake("flash_attention_backward", "dq_overwritten_per_key_tile",
         "dq of a query tile is assigned (=) in each key tile instead of accumulated (+=): only the last key tile's "
         "share survives (dk and dv are right)",
         "dq[..., qs:qe, :] += dS @ k_tile / sqrt(d): with the key tiles outside, dq collects a share from each")
def _bwd_dq_overwritten():
    return _backward_variant(overwrite_dq=True)


@mistake("flash_attention_backward", "recomputed_scores_not_scaled",
         "the scores recomputed in backward are not divided by sqrt(d), so P = exp(S - lse) is not the forward's "
         "weights (lse is the logsumexp of the scaled scores)",
         "recompute S = q_tile @ k_tile^T / sqrt(d), exactly as in forward, before P = exp(S - lse)")
def _bwd_unscaled():
    return _backward_variant(unscaled_recompute=True)


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

