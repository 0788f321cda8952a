"""Lesson 9, efficient attention I: a sliding-window mask, online-softmax (tiled) attention and
FlashAttention's tiled forward pass (with lse, causal tiles and a sliding window).
Their cases, their items and their known mistakes.

Every item that computes attention may not call a built-in softmax or attention (``forbidden``), and
each has large cases (``max_numel``) on which every legitimate tensor is smaller than ``n_q * n_k``: a
tensor that big is a score matrix (or a mask) the lesson is about never building.
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
from exercises.flash_shapes import FLASH_SHAPES, LARGE_N, NO_BUILTIN_ATTENTION, limit, qkv, settings
from exercises.i18n import tr
from exercises.mistake_core import NEG_INF
from exercises.mistakes import mistake

NOTEBOOK = "09_flash_attention_forward.ipynb"


# --- cases ----------------------------------------------------------------------------------------------


def window_rule(window: int) -> Check:
    def check(student: Outputs, reference: Outputs) -> str | None:
        m = student.tensor("out")
        if m is None or m.dtype != torch.bool or m.dim() != 2 or m.shape[0] != m.shape[1]:
            return None
        i, j = torch.meshgrid(torch.arange(m.shape[0]), torch.arange(m.shape[1]), indexing="ij")
        allowed = (i - j >= 0) & (i - j < window)
        if bool((m & ~allowed & (j > i)).any()):
            return tr("the mask lets a query see a later key: a sliding window is causal too (i - j >= 0)")
        if bool((m & ~allowed).any()):
            return tr("the mask reaches further back than the window: query i may see keys i-{back}..i only").format(
                back=window - 1)
        if bool((~m & allowed).any()):
            return tr("the mask hides keys inside the window: query i must see keys i-{back}..i (the diagonal "
                      "too)").format(back=window - 1)
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


# (name, batch, n_q, n_k, d, d_v, block_q, block_k, causal, window_size): the sliding-window cases. Every
# query sees at least one key (no case has a query past the last key's window).
WINDOW_SHAPES = [
    ("window_tiles_skipped", (2,), 24, 24, 4, 4, 4, 3, False, 5),  # a window implies causal
    ("window_tiles_do_not_divide_n", (2,), 17, 17, 4, 5, 5, 3, True, 6),
    ("window_of_1", (), 9, 9, 4, 3, 2, 2, True, 1),
    ("window_nq_lt_nk", (2,), 6, 11, 4, 3, 4, 2, True, 3),  # top-left: query i sees keys i-2..i
    ("window_larger_than_n", (), 7, 7, 3, 3, 3, 2, True, 20),
    ("large_window_no_score_matrix", (1,), LARGE_N, LARGE_N, 8, 8, 32, 48, False, 40),
]


def _flash_forward(gen, dtype):
    cases = []
    shapes = [(*shape, None) for shape in FLASH_SHAPES] + WINDOW_SHAPES
    for name, batch, nq, nk, d, dv, bq, bk, causal, window in shapes:
        extra = {} if window is None else {"window_size": literal_arg(window)}
        program = call("flash_attention_forward", tensor_arg("q"), tensor_arg("k"), tensor_arg("v"),
                       **settings(causal, bq, bk), **extra)
        dims = {"out.0": ("batch",) * len(batch) + QUERY_FEATURE_DIMS, "out.1": ("batch",) * len(batch) + ("query",)}
        cases.append(Case(name, program, qkv(gen, batch, nq, nk, d, dv, dtype), dims,
                          max_numel=limit(name, nq, nk)))
    return cases


ITEMS: list[Item] = [
    Item("sliding_window_mask", NOTEBOOK, _sliding, dtypes=(None,), gpu_dtypes=()),
    Item("online_softmax_attention", NOTEBOOK, _online, forbidden=NO_BUILTIN_ATTENTION),
    Item("flash_attention_forward", NOTEBOOK, _flash_forward, forbidden=NO_BUILTIN_ATTENTION),
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


@mistake("sliding_window_mask", "transposed",
         "the mask is transposed (j - i in place of i - j): each query sees itself and the window_size - 1 LATER "
         "tokens, not the earlier ones",
         "query i is the row, key j the column: allow 0 <= i - j < window_size")
def _window_transposed():
    return _window_variant(lambda d, w: (d <= 0) & (-d < w))


def _online_variant(*, rescale_sum: bool = True, rescale_acc: bool = True, use_causal: bool = True,
                    scale: bool = True, hide_diagonal: bool = False, drop_partial_block: bool = False,
                    bottom_right: bool = False, block_local_positions: bool = False):
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
                key_pos = torch.arange(0 if block_local_positions else start, end - start if block_local_positions
                                       else end, device=q.device)[None, :]
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


@mistake("online_softmax_attention", "causal_block_local_key_positions",
         "the causal mask compares query positions with key positions counted from the start of each block "
         "(0 .. block_size - 1), not from the start of the sequence: later blocks are masked as if they were first",
         "the keys of the block k[..., start:end, :] stand at positions torch.arange(start, end)")
def _online_local():
    return _online_variant(block_local_positions=True)


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
                     use_causal: bool = True, scale: bool = True, use_window: bool = True,
                     window_implies_causal: bool = True, window_extra: int = 0, window_start_from_last_query=False,
                     tile_local_positions: bool = False):
    def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64, window_size=None):
        window = window_size if use_window else None
        causal = (causal or (window_size is not None and window_implies_causal)) and use_causal
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
            first = 0
            if window is not None:  # the first key in reach: of the tile's first query (right) or its last
                first = max(0, (qe - 1 if window_start_from_last_query else qs) - window + 1) // block_k * block_k
            for ks in range(first, n_k, block_k):
                if causal and ks > (qs if skip_from_first_query else qe - 1):
                    break
                ke = min(ks + block_k, n_k)
                s = q[..., qs:qe, :] @ k[..., ks:ke, :].transpose(-2, -1) * factor
                key_pos = torch.arange(ks, ke, device=q.device)[None, :] - (ks if tile_local_positions else 0)
                if causal:
                    s = s.masked_fill(key_pos > query_pos, NEG_INF)
                if window is not None:
                    s = s.masked_fill(query_pos - key_pos >= window + window_extra, NEG_INF)
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


@mistake("flash_attention_forward", "causal_tile_local_key_positions",
         "the causal mask compares the tile's query positions with key positions counted from the start of the key "
         "tile (0 .. block_k - 1), not from the start of the sequence",
         "the keys of the tile k[..., ks:ke, :] stand at positions torch.arange(ks, ke); the queries at "
         "torch.arange(qs, qe)")
def _fwd_local():
    return _forward_variant(tile_local_positions=True)


@mistake("flash_attention_forward", "no_scaling",
         "the scores are not divided by sqrt(d)",
         "s = q_tile @ k_tile^T / d ** 0.5 (and lse is the logsumexp of these scaled scores)")
def _fwd_scale():
    return _forward_variant(scale=False)



@mistake("flash_attention_forward", "window_ignored",
         "window_size is ignored: each query attends to every earlier key, not only the last window_size",
         "mask the keys with i - j >= window_size as well, and skip the key tiles wholly before the window")
def _fwd_window_ignored():
    return _forward_variant(use_window=False)


@mistake("flash_attention_forward", "window_without_causal",
         "with window_size and causal=False the later keys stay visible: a sliding window is causal too",
         "a window implies causal: causal = causal or window_size is not None")
def _fwd_window_not_causal():
    return _forward_variant(window_implies_causal=False)


@mistake("flash_attention_forward", "window_one_too_wide",
         "the window is one key too wide: i - j <= window_size lets a query see window_size + 1 keys",
         "hide key j from query i when i - j >= window_size (the query itself counts)")
def _fwd_window_wide():
    return _forward_variant(window_extra=1)


@mistake("flash_attention_forward", "window_skip_from_last_query",
         "key tiles are skipped up to the window of the tile's LAST query, so its earlier queries lose keys "
         "they may see",
         "the first key tile to visit holds key qs - window_size + 1, the first key the tile's FIRST query sees: "
         "start at max(0, qs - window_size + 1) // block_k * block_k")
def _fwd_window_skip():
    return _forward_variant(window_start_from_last_query=True)
