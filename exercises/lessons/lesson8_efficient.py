"""Lesson 8, efficient attention: a sliding-window mask and online-softmax (tiled) attention.
Their cases, their items and their known mistakes.
"""

from __future__ import annotations

import torch

from exercises.cases import (
    DEVICE_ARG,
    QUERY_FEATURE_DIMS,
    QUERY_KEY_DIMS,
    Case,
    Check,
    Item,
    call,
    literal_arg,
    rand,
    tensor_arg,
)
from exercises.compare import Outputs
from exercises.mistake_core import NEG_INF
from exercises.mistakes import mistake

NOTEBOOK = "08_efficient_attention.ipynb"


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
    ]:
        inputs = {"q": rand(gen, *batch, nq, d, dtype=dtype), "k": rand(gen, *batch, nk, d, dtype=dtype),
                  "v": rand(gen, *batch, nk, dv, dtype=dtype)}
        program = call("online_softmax_attention", tensor_arg("q"), tensor_arg("k"), tensor_arg("v"),
                       block_size=literal_arg(block), causal=literal_arg(causal))
        cases.append(Case(name, program, inputs, {"out": ("batch",) * len(batch) + QUERY_FEATURE_DIMS}))
    return cases


ITEMS: list[Item] = [
    Item("sliding_window_mask", NOTEBOOK, _sliding, dtypes=(None,), gpu_dtypes=()),
    Item("online_softmax_attention", NOTEBOOK, _online),
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
