"""Lesson 8, generating fast and long: ``KVCache`` (rolling window, attention sinks), ``safe_softmax``,
``GroupedQueryAttention`` (forward through a cache), ``kv_cache_bytes``, ``padding_mask``. Their cases, their
items and their known mistakes.

A cache is stateful: its cases are call programs that create one ``KVCache`` and append to it several times,
reading ``len`` and ``positions()`` after each append (method calls through the interpreter's ``attr`` step;
no new step was needed). Feeding tokens one at a time through ``GroupedQueryAttention`` with a cache must
build no tensor as large as the ``(b, h, n, n)`` score matrix of the whole sequence: those cases carry a
``max_numel`` that the operation monitor (``exercises/op_guard.py``) enforces, so an answer that keeps the
inputs and recomputes everything at every step fails them although its values are right.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

import solutions
from exercises.cases import (
    BUILTIN_MHA,
    BUILTIN_SDPA,
    BUILTIN_SOFTMAX,
    DEVICE_ARG,
    QUERY_FEATURE_DIMS,
    Case,
    Item,
    build_module,
    call,
    causal_leak_case,
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
from exercises.mistakes import error_hint, mistake

NOTEBOOK = "08_fast_generation.ipynb"
KV_DIMS = ("batch", "head", "key", "feature")
SCORE_DIMS = ("query", "key")


# --- KVCache ----------------------------------------------------------------------------------------------


def _cache_steps(window: int | None, sinks: int | None, chunks: list[int]) -> list[dict[str, Any]]:
    """Create a cache, read ``len`` once, then append each chunk and read ``len`` and ``positions()`` after it."""
    kwargs = {} if window is None else {"window": literal_arg(window)}
    if sinks is not None:
        kwargs["sinks"] = literal_arg(sinks)
    steps: list[dict[str, Any]] = [
        {"op": "call", "fn": "KVCache", "args": [], "kwargs": kwargs, "out": "cache"},
        {"op": "attr", "obj": "cache", "name": "append", "out": "append"},
        {"op": "attr", "obj": "cache", "name": "__len__", "out": "length"},
        {"op": "attr", "obj": "cache", "name": "positions", "out": "positions"},
        {"op": "call", "fn": "length", "args": [], "out": "len_start"},
        {"op": "output", "key": "len_start", "var": "len_start"},
    ]
    for i in range(len(chunks)):
        steps += [
            {"op": "call", "fn": "append", "args": [tensor_arg(f"k{i}"), tensor_arg(f"v{i}")], "out": f"kv{i}"},
            {"op": "output", "key": f"append{i}", "var": f"kv{i}"},
            {"op": "call", "fn": "length", "args": [], "out": f"n{i}"},
            {"op": "output", "key": f"len{i}", "var": f"n{i}"},
            {"op": "call", "fn": "positions", "args": [], "out": f"p{i}"},
            # positions() may live on any device the student likes: compare them on the CPU
            {"op": "call", "fn": "torch.Tensor.cpu", "args": [var_arg(f"p{i}")], "out": f"pc{i}"},
            {"op": "output", "key": f"positions{i}", "var": f"pc{i}"},
        ]
    return steps


def _cache(gen, dtype):
    b, h, d = 2, 3, 4
    configs = [  # (name, window, sinks, chunks); every window case appends past its window
        ("no_window", None, None, [3, 1, 1, 2]),
        ("window_5_no_sinks", 5, None, [3, 1, 1, 1, 2, 1]),
        ("window_6_two_sinks", 6, 2, [1, 2, 1, 1, 1, 3, 1, 1]),
        ("window_4_one_sink_long_prompt", 4, 1, [7, 1, 2]),
        ("window_5_three_sinks_tokens", 5, 3, [1] * 9),
    ]
    cases = []
    for name, window, sinks, chunks in configs:
        inputs = {}
        for i, n in enumerate(chunks):
            inputs[f"k{i}"] = rand(gen, b, h, n, d, dtype=dtype)
            inputs[f"v{i}"] = rand(gen, b, h, n, d, dtype=dtype)
        dims = {f"append{i}": KV_DIMS for i in range(len(chunks))} | \
            {f"positions{i}": ("key",) for i in range(len(chunks))}
        cases.append(Case(name, _cache_steps(window, sinks, chunks), inputs, dims))
    return cases


# --- safe_softmax -----------------------------------------------------------------------------------------


def no_nan(key: str = "out") -> Any:
    """A row whose keys are all masked gives zeros: no NaN anywhere."""
    def check(student: Outputs, reference: Outputs) -> str | None:
        got = student.tensor(key)
        if got is None or not got.is_floating_point() or not bool(got.isnan().any()):
            return None
        return tr("`{key}` holds NaN: a row whose keys are all masked must give zeros (exp(-inf - (-inf)) is NaN; "
                  "guard the maximum and the sum of such rows), and large scores must not overflow").format(key=key)
    return check


def _softmax(gen, dtype):
    cases = []

    def add(name, scores, mask):
        batch = ("batch",) * (scores.dim() - 2)
        cases.append(Case(name, call("safe_softmax", tensor_arg("scores"), tensor_arg("mask")),
                          {"scores": scores, "mask": mask}, {"out": batch + SCORE_DIMS}, (no_nan(),)))

    mask = torch.rand(2, 1, 5, 7, generator=gen) > 0.4
    mask[0, 0, 1] = False  # a query with no allowed key
    mask[1, 0, 3] = False
    mask[:, :, 0, 0] = True
    add("random_mask_with_fully_masked_rows", rand(gen, 2, 3, 5, 7, dtype=dtype, scale=2.0), mask)
    add("causal_mask_broadcast", rand(gen, 2, 6, 6, dtype=dtype, scale=2.0),
        torch.ones(6, 6, dtype=torch.bool).tril())
    lengths = torch.tensor([5, 2, 0])  # the third sequence is all padding
    padding = (torch.arange(5)[None, :] < lengths[:, None]).view(3, 1, 1, 5)
    add("padding_mask_one_sequence_all_padding", rand(gen, 3, 2, 4, 5, dtype=dtype), padding)
    big = torch.rand(4, 6, generator=gen) > 0.3
    big[:, 2] = True
    add("large_scores", rand(gen, 4, 6, dtype=dtype, scale=1000.0), big)
    scores = rand(gen, 3, 5, dtype=dtype)
    hidden = torch.rand(3, 5, generator=gen) > 0.5
    hidden[:, 0] = False  # key 0 always allowed
    scores = torch.where(hidden, torch.full_like(scores, 1e4), scores)  # masked keys with huge scores
    add("masked_keys_with_huge_scores", scores, ~hidden)
    return cases


# --- GroupedQueryAttention --------------------------------------------------------------------------------

GQA = "GroupedQueryAttention"


def _step_program(kwargs, params, chunks, full: bool) -> list[dict[str, Any]]:
    """Build the module (eval), create a cache, feed the chunks ``x0, x1, ...`` through it; optionally the
    whole sequence ``x`` in one pass without a cache at the end."""
    steps = build_module(GQA, kwargs, params) + [{"op": "call", "fn": "KVCache", "args": [], "out": "cache"}]
    for i in range(len(chunks)):
        steps += [{"op": "call", "fn": "m", "args": [tensor_arg(f"x{i}")], "kwargs": {"cache": var_arg("cache")},
                   "out": f"y{i}"},
                  {"op": "output", "key": f"step{i}", "var": f"y{i}"}]
    steps += [{"op": "attr", "obj": "cache", "name": "__len__", "out": "length"},
              {"op": "call", "fn": "length", "args": [], "out": "n"},
              {"op": "output", "key": "cache_len", "var": "n"}]
    if full:
        steps += [{"op": "call", "fn": "m", "args": [tensor_arg("x")], "out": "y_full"},
                  {"op": "output", "key": "full", "var": "y_full"}]
    return steps


def steps_equal_full(chunks: list[int]) -> Any:
    """Feeding the chunks through a cache gives the outputs of one full forward pass (the student's own)."""
    def check(student: Outputs, reference: Outputs) -> str | None:
        parts = [student.tensor(f"step{i}") for i in range(len(chunks))]
        full = student.tensor("full")
        if full is None or any(p is None or p.dim() != 3 for p in parts):
            return None
        try:
            stepped = torch.cat(parts, dim=1)
        except RuntimeError:
            return None
        if stepped.shape != full.shape or value_mismatch("full", stepped, full) is None:
            return None
        return tr("feeding the sequence through a KVCache in chunks of {chunks} tokens does not give the outputs "
                  "of one full forward pass: the new queries must attend to every cached key and causally to "
                  "each other (query i of n_new may see key j of n_kept when j <= n_kept - n_new + i)").format(
            chunks=chunks)
    return check


def _cached_case(name, kwargs, gen, dtype, chunks, full: bool, limit: bool) -> Case:
    params = reference_params(GQA, kwargs, gen, dtype)
    n = sum(chunks)
    x = rand(gen, 2, n, kwargs["d_in"], dtype=dtype)
    inputs = {**params, "x": x}
    start = 0
    for i, c in enumerate(chunks):
        inputs[f"x{i}"] = x[:, start:start + c].clone()
        start += c
    dims = {f"step{i}": ("batch",) + QUERY_FEATURE_DIMS for i in range(len(chunks))} | \
        {"full": ("batch",) + QUERY_FEATURE_DIMS}
    # Token by token, every legitimate tensor is at most (b, h, n, head_dim), the module's (context_length,
    # context_length) mask or a parameter; the (b, h, n, n) scores of the whole sequence are twice the bound.
    b, h = x.shape[0], kwargs["num_heads"]
    max_numel = b * h * n * n // 2 if limit else None
    checks = (steps_equal_full(chunks),) if full else ()
    return Case(name, _step_program(kwargs, params, chunks, full), inputs, dims, checks, max_numel=max_numel)


def _gqa(gen, dtype):
    base = {"d_in": 6, "d_out": 8, "context_length": 12, "dropout": 0.0, "num_heads": 4, "num_kv_groups": 2}
    cases = module_cases(GQA, [
        ("four_heads_two_groups", base, (2, 7, 6)),
        ("multi_query_one_group", {**base, "num_kv_groups": 1}, (2, 6, 6)),
        ("multi_head_one_group_per_head", {**base, "num_kv_groups": 4}, (3, 5, 6)),
        ("six_heads_three_groups_qkv_bias", {**base, "d_out": 12, "num_heads": 6, "num_kv_groups": 3,
                                             "qkv_bias": True}, (2, 9, 6)),
        ("eval_ignores_dropout", {**base, "dropout": 0.5}, (1, 4, 6)),
    ], gen, dtype)
    cases.append(causal_leak_case(GQA, base, gen, dtype, 2, 8, 3))
    cases.append(_cached_case("cache_token_by_token", base, gen, dtype, [1] * 12, full=False, limit=True))
    cases.append(_cached_case("cache_token_by_token_multi_query", {**base, "num_kv_groups": 1}, gen, dtype,
                              [1] * 12, full=False, limit=True))
    cases.append(_cached_case("cache_prompt_then_chunks", base, gen, dtype, [4, 1, 2, 3], full=True, limit=False))
    cases.append(_cached_case("cache_six_heads_three_groups", {**base, "d_out": 12, "num_heads": 6,
                                                               "num_kv_groups": 3}, gen, dtype, [3, 1, 1, 3],
                              full=True, limit=False))
    cases += module_invariants(GQA, base, gen, dtype)
    bad = {**base, "num_kv_groups": 3}

    def raises(student: Outputs, reference: Outputs) -> str | None:
        got = student.meta.get("raised", {}).get("value")
        if got == "ValueError":
            return None
        return tr("GroupedQueryAttention(num_heads=4, num_kv_groups=3) must raise ValueError: num_heads must be "
                  "divisible by num_kv_groups; got {got}").format(got=tr("no exception") if not got else got)
    cases.append(Case("rejects_indivisible_groups",
                      [{"op": "raises", "fn": GQA, "kwargs": {k: literal_arg(v) for k, v in bad.items()}, "out": "r"},
                       {"op": "output", "key": "raised", "var": "r"}], {}, checks=(raises,), compare=False))
    return cases


# --- kv_cache_bytes ---------------------------------------------------------------------------------------


def python_int(student: Outputs, reference: Outputs) -> str | None:
    got = student.meta.get("out", {}).get("pytype")
    if got == "int":
        return None
    return tr("kv_cache_bytes must return a Python int (a number of bytes), got {got}").format(got=got)


def _bytes(gen, dtype):
    configs = [  # (name, positional arguments, keyword arguments)
        ("llama3_8b_gqa_32k_tokens", [32, 8, 128, 32768], {}),
        ("llama_class_mha_32k_tokens", [32, 32, 128, 32768], {}),
        ("batch_and_float32_values", [3, 5, 7, 11], {"batch_size": 13, "bytes_per_value": 4}),
        ("one_byte_values", [6, 2, 64, 100], {"batch_size": 3, "bytes_per_value": 1}),
        ("every_argument_positional", [5, 3, 7, 9, 2, 4], {}),
    ]
    return [Case(name, call("kv_cache_bytes", *(literal_arg(a) for a in args),
                            **{k: literal_arg(v) for k, v in kwargs.items()}), {}, checks=(python_int,))
            for name, args, kwargs in configs]


# --- padding_mask -----------------------------------------------------------------------------------------


def _padding(gen, dtype):
    configs = [
        ("three_prompts", [3, 5, 1], 5),
        ("empty_and_full", [0, 4], 4),
        ("longer_than_every_prompt", [6], 8),
        ("four_prompts", [int(n) for n in torch.randint(0, 8, (4,), generator=gen)] + [7], 7),
    ]
    return [Case(name, call("padding_mask", tensor_arg("lengths"), literal_arg(n), device=DEVICE_ARG),
                 {"lengths": torch.tensor(lengths, dtype=torch.int64)}, {"out": ("batch", "token")})
            for name, lengths, n in configs]


ITEMS: list[Item] = [
    Item("KVCache", NOTEBOOK, _cache),
    Item("safe_softmax", NOTEBOOK, _softmax, forbidden=BUILTIN_SOFTMAX + BUILTIN_SDPA + BUILTIN_MHA),
    Item("GroupedQueryAttention", NOTEBOOK, _gqa, forbidden=BUILTIN_SOFTMAX + BUILTIN_SDPA + BUILTIN_MHA,
         depends_on=("safe_softmax",)),
    Item("kv_cache_bytes", NOTEBOOK, _bytes, dtypes=(None,), gpu_dtypes=()),
    Item("padding_mask", NOTEBOOK, _padding, dtypes=(None,), gpu_dtypes=()),
]


# --- known mistakes: KVCache ------------------------------------------------------------------------------


def _cache_variant(**knobs: Any):
    class KVCache(solutions.KVCache):
        def __init__(self, window=None, sinks=0):
            self.true_window = window
            if window is not None and knobs.get("window") == "plus_sinks":
                window = window + sinks
            elif window is not None and knobs.get("window") == "one_too_few":
                window = window - 1
            elif knobs.get("window") == "ignored":
                window = None
            super().__init__(window, 0 if knobs.get("sinks") == "evicted" else sinks)

        def append(self, k, v):
            if knobs.get("evict") == "one":  # drops at most one entry per append
                keys, values = solutions.KVCache(None).append(k, v) if self.keys is None else (
                    torch.cat([self.keys, k], -2), torch.cat([self.values, v], -2))
                positions = torch.cat([self.kept_positions.to(k.device),
                                       torch.arange(self.num_appended, self.num_appended + k.shape[-2],
                                                    device=k.device)])
                self.num_appended += k.shape[-2]
                if self.window is not None and positions.numel() > self.window:
                    keep = torch.cat([torch.arange(self.sinks), torch.arange(self.sinks + 1, positions.numel())])
                    keys, values, positions = keys[..., keep, :], values[..., keep, :], positions[keep]
                self.keys, self.values, self.kept_positions = keys, values, positions
                return keys, values
            keys, values = super().append(k, v)
            return (k, v) if knobs.get("returns") == "new" else (keys, values)

        def __len__(self):
            return self.kept_positions.numel() if knobs.get("len") == "kept" else super().__len__()

        def positions(self):
            positions = super().positions()
            if knobs.get("positions") == "restart":
                return torch.arange(positions.numel(), device=positions.device)
            if knobs.get("positions") == "float" and self.keys is not None:
                return positions.to(self.keys.dtype)
            return positions
    return {"KVCache": KVCache}


@mistake("KVCache", "returns_only_new",
         "append returns only the keys and values just appended, not every kept one, so a new query never "
         "sees the earlier tokens",
         "store the concatenation and return it: self.keys = torch.cat([self.keys, k], dim=-2); return self.keys, "
         "self.values")
def _cache_new():
    return _cache_variant(returns="new")


@mistake("KVCache", "sinks_evicted",
         "the sinks are evicted like any other entry: the window keeps only the most recent positions",
         "keep the first `sinks` positions ever appended, then the most recent window - sinks")
def _cache_sinks():
    return _cache_variant(sinks="evicted")


@mistake("KVCache", "window_excludes_sinks",
         "the sinks are kept on top of the window (sinks + window entries instead of window in all)",
         "the window counts the sinks: keep the first `sinks` and the most recent window - sinks")
def _cache_plus():
    return _cache_variant(window="plus_sinks")


@mistake("KVCache", "window_one_too_small",
         "one entry too few is kept (window - 1): an off-by-one in the eviction test",
         "evict only while more than `window` entries are kept: if n_kept > window")
def _cache_short():
    return _cache_variant(window="one_too_few")


@mistake("KVCache", "window_ignored",
         "nothing is ever evicted: the window is ignored",
         "after appending, keep at most `window` entries (the sinks and the most recent window - sinks)")
def _cache_no_window():
    return _cache_variant(window="ignored")


@mistake("KVCache", "evicts_one_per_append",
         "at most one entry is evicted per append, so appending several tokens at once (a prompt) overflows the "
         "window",
         "evict everything beyond the window after each append, however many tokens it brought")
def _cache_one():
    return _cache_variant(evict="one")


@mistake("KVCache", "positions_restart_after_eviction",
         "positions() numbers the kept entries 0, 1, 2, ... instead of giving their absolute positions, which "
         "differ after an eviction",
         "keep a tensor of absolute positions next to the keys and evict from it exactly as from the keys")
def _cache_restart():
    return _cache_variant(positions="restart")


@mistake("KVCache", "len_counts_kept",
         "len(cache) counts the kept entries instead of every position appended so far",
         "keep a counter of appended positions (it is the position of the next token): return it in __len__")
def _cache_len():
    return _cache_variant(len="kept")


@mistake("KVCache", "positions_not_int64",
         "positions() returns floating-point numbers (the keys' dtype) instead of int64 positions",
         "make the positions with torch.arange(start, end) (int64), not with dtype=k.dtype")
def _cache_float():
    return _cache_variant(positions="float")


# --- known mistakes: safe_softmax -------------------------------------------------------------------------


def _softmax_variant(how: str):
    def safe_softmax(scores, mask):
        fill = torch.finfo(scores.dtype).min if how == "finfo_min" else (0.0 if how == "zero" else float("-inf"))
        allowed = ~mask if how == "inverted" else mask
        masked = scores if how == "after" else scores.masked_fill(~allowed, fill)
        dim = -2 if how == "queries" else -1
        row_max = (scores if how == "max_of_all" else masked).amax(dim, keepdim=True)
        if how not in ("nan", "finfo_min", "zero", "after"):
            row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
        exp = torch.exp(masked) if how == "no_max" else torch.exp(masked - row_max)
        if how == "after":
            exp = exp / exp.sum(dim, keepdim=True)
            return exp * allowed
        total = exp.sum(dim, keepdim=True)
        if how in ("nan", "finfo_min", "zero"):
            return exp / total
        return exp / torch.where(total > 0, total, torch.ones_like(total))
    return {"safe_softmax": safe_softmax}


@mistake("safe_softmax", "nan_on_fully_masked",
         "a row whose keys are all masked gives NaN: its maximum is -inf and exp(-inf - (-inf)) is NaN",
         "replace a -inf row maximum by 0 and divide by 1 where a row's sum is 0, so such rows give zeros")
def _sm_nan():
    return _softmax_variant("nan")


@mistake("safe_softmax", "mask_inverted",
         "the mask is used the wrong way round: True is where a query may attend, so mask ~mask, not mask",
         "scores.masked_fill(~mask, float('-inf'))")
def _sm_inverted():
    return _softmax_variant("inverted")


@mistake("safe_softmax", "masked_with_zero",
         "masked scores are set to 0 instead of -inf, so masked keys still get weight",
         "fill with float('-inf'): exp(-inf) = 0")
def _sm_zero():
    return _softmax_variant("zero")


@mistake("safe_softmax", "masked_after_softmax",
         "the weights are masked after a softmax over every key, so the allowed weights no longer sum to 1",
         "mask the scores before the exponential, then normalise over the allowed keys only")
def _sm_after():
    return _softmax_variant("after")


@mistake("safe_softmax", "no_max_subtracted",
         "the row maximum is not subtracted, so large scores overflow exp (inf / inf = NaN)",
         "subtract each row's maximum over the allowed keys before the exponential")
def _sm_no_max():
    return _softmax_variant("no_max")


@mistake("safe_softmax", "max_over_masked_scores",
         "the maximum subtracted is taken over every key, masked ones included: a large masked score makes "
         "every allowed exp underflow to 0 (0 / 0 = NaN)",
         "take the maximum of the masked scores (after masked_fill with -inf)")
def _sm_max_all():
    return _softmax_variant("max_of_all")


@mistake("safe_softmax", "uniform_on_fully_masked",
         "masked scores are filled with the dtype's most negative finite number, so a fully masked row gets "
         "uniform weights instead of zeros",
         "fill with -inf and give a row with no allowed key zeros (or multiply the exponentials by the mask)")
def _sm_uniform():
    return _softmax_variant("finfo_min")


@mistake("safe_softmax", "softmax_over_queries",
         "the softmax is taken over the queries (dim=-2) instead of the keys (dim=-1)",
         "take the maximum and the sum over dim=-1")
def _sm_queries():
    return _softmax_variant("queries")


# --- known mistakes: GroupedQueryAttention ----------------------------------------------------------------


def _gqa_variant(**knobs: Any):
    class GroupedQueryAttention(solutions.GroupedQueryAttention):
        def __init__(self, d_in, d_out, context_length, dropout, num_heads, num_kv_groups, qkv_bias=False):
            if knobs.get("check") == "none" and num_heads % num_kv_groups:
                num_kv_groups = num_heads // (num_heads // num_kv_groups)  # silently rounds the groups
            super().__init__(d_in, d_out, context_length, dropout, num_heads, num_kv_groups, qkv_bias)

        def forward(self, x, cache=None):
            b, n_new, _ = x.shape
            q = self.W_query(x).view(b, n_new, self.num_heads, self.head_dim).transpose(1, 2)
            k = self.W_key(x).view(b, n_new, self.num_kv_groups, self.head_dim).transpose(1, 2)
            v = self.W_value(x).view(b, n_new, self.num_kv_groups, self.head_dim).transpose(1, 2)
            if cache is None:
                mask = self.mask[:n_new, :n_new]
            else:
                start = len(cache)
                kept_k, kept_v = cache.append(k, v)
                if knobs.get("cached") != "ignored":
                    k, v = kept_k, kept_v
                n_kept = k.shape[-2]
                if knobs.get("offset") == "forgotten":
                    mask = torch.ones(n_new, n_kept, dtype=torch.bool, device=x.device).tril()
                elif knobs.get("new") == "not_causal":
                    mask = torch.ones(n_new, n_kept, dtype=torch.bool, device=x.device)
                else:
                    positions = cache.positions().to(x.device)[-n_kept:]
                    mask = positions[None, :] <= torch.arange(start, start + n_new, device=x.device)[:, None]
            if knobs.get("causal") == "none":
                mask = torch.ones_like(mask)
            if knobs.get("groups") == "modulo":  # head h reads group h % g
                k, v = (t.repeat(1, self.group_size, 1, 1) for t in (k, v))
            else:
                k, v = (t.repeat_interleave(self.group_size, dim=1) for t in (k, v))
            scale = self.d_out ** 0.5 if knobs.get("scale") == "d_out" else self.head_dim ** 0.5
            weights = solutions.safe_softmax(q @ k.transpose(-2, -1) / scale, mask)
            weights = F.dropout(weights, self.dropout.p, training=True) if knobs.get("dropout") == "always" \
                else self.dropout(weights)
            context = (weights @ v).transpose(1, 2).reshape(b, n_new, self.d_out)
            return context if knobs.get("out_proj") == "none" else self.out_proj(context)
    return {GQA: GroupedQueryAttention}


@mistake(GQA, "groups_mapped_modulo",
         "query head h reads key/value group h % num_kv_groups (keys.repeat) instead of h // (num_heads // "
         "num_kv_groups) (keys.repeat_interleave)",
         "keys.repeat_interleave(num_heads // num_kv_groups, dim=1): neighbouring query heads share a group")
def _gqa_modulo():
    return _gqa_variant(groups="modulo")


@mistake(GQA, "causal_offset_forgotten",
         "with a cache the causal mask is the top-left (n_new, n_kept) triangle, so the new queries, which come "
         "after every cached key, are masked as if they were the first tokens",
         "query i of n_new may see key j of n_kept when j <= n_kept - n_new + i: "
         "torch.ones(n_new, n_kept).tril(diagonal=n_kept - n_new)")
def _gqa_offset():
    return _gqa_variant(offset="forgotten")


@mistake(GQA, "cached_keys_ignored",
         "the new tokens are appended to the cache but attend only to their own keys and values, not to those "
         "the cache returns",
         "keys, values = cache.append(keys, values) and attend to what it returns")
def _gqa_ignored():
    return _gqa_variant(cached="ignored")


@mistake(GQA, "new_tokens_not_causal",
         "with a cache, the new tokens attend to each other without a causal mask (fine for one token, wrong for "
         "a prompt or a chunk of several)",
         "mask the new queries causally among themselves too: tril(diagonal=n_kept - n_new)")
def _gqa_new():
    return _gqa_variant(new="not_causal")


@mistake(GQA, "not_causal",
         "no causal mask at all: every token attends to later tokens",
         "mask with self.mask[:n, :n] (True = may attend) before the softmax")
def _gqa_not_causal():
    return _gqa_variant(causal="none")


@mistake(GQA, "scaled_by_d_out",
         "the scores are divided by sqrt(d_out) instead of sqrt(head_dim)",
         "divide by head_dim ** 0.5, head_dim = d_out // num_heads")
def _gqa_scale():
    return _gqa_variant(scale="d_out")


@mistake(GQA, "no_output_projection",
         "the output projection out_proj is never applied",
         "return self.out_proj(context)")
def _gqa_proj():
    return _gqa_variant(out_proj="none")


@mistake(GQA, "dropout_active_in_eval",
         "dropout is applied even in eval() mode (F.dropout without training=self.training)",
         "use self.dropout = nn.Dropout(dropout) and call self.dropout(attn_weights)")
def _gqa_dropout():
    return _gqa_variant(dropout="always")


def _raised_nothing(student: Outputs, reference: Outputs) -> bool:
    return student.meta.get("raised", {}).get("value") == ""


@mistake(GQA, "no_divisibility_check",
         "GroupedQueryAttention accepts a num_kv_groups that does not divide num_heads",
         "in __init__: if num_heads % num_kv_groups != 0: raise ValueError(...)", predicate=_raised_nothing)
def _gqa_check():
    return _gqa_variant(check="none")


error_hint(GQA, "kv_projections_full_width", r"parameter `W_(key|value)\.weight` has shape",
           "W_key or W_value projects to d_out features (one key per query head) instead of num_kv_groups * "
           "head_dim: that is multi-head attention, with no memory saved",
           "self.W_key = nn.Linear(d_in, num_kv_groups * head_dim, bias=qkv_bias), the same for W_value")


# --- known mistakes: kv_cache_bytes -----------------------------------------------------------------------


def _bytes_variant(how: str):
    def kv_cache_bytes(num_layers, num_kv_heads, head_dim, num_tokens, batch_size=1, bytes_per_value=2):
        factors = {"k_and_v": 2, "layers": num_layers, "heads": num_kv_heads, "dim": head_dim,
                   "tokens": num_tokens, "batch": batch_size, "bytes": bytes_per_value}
        factors.pop({"no_two": "k_and_v", "no_layers": "layers", "no_batch": "batch", "no_bytes": "bytes",
                     "no_tokens": "tokens"}.get(how, ""), None)
        total = 1
        for value in factors.values():
            total *= value
        if how == "float":
            return float(total)
        if how == "tensor":
            return torch.tensor(total)
        if how == "gigabytes":
            return total / 1e9
        return total
    return {"kv_cache_bytes": kv_cache_bytes}


@mistake("kv_cache_bytes", "forgets_k_and_v",
         "only the keys (or only the values) are counted: the factor 2 for K and V is missing",
         "a cache holds keys and values: 2 * num_layers * num_kv_heads * head_dim * num_tokens * batch_size * "
         "bytes_per_value")
def _bytes_two():
    return _bytes_variant("no_two")


@mistake("kv_cache_bytes", "forgets_layers",
         "the cache of one layer is counted: every layer keeps its own keys and values",
         "multiply by num_layers")
def _bytes_layers():
    return _bytes_variant("no_layers")


@mistake("kv_cache_bytes", "ignores_batch_size",
         "batch_size is ignored: every sequence of a batch has its own cache",
         "multiply by batch_size")
def _bytes_batch():
    return _bytes_variant("no_batch")


@mistake("kv_cache_bytes", "counts_values_not_bytes",
         "the number of values is returned, not bytes: bytes_per_value is ignored",
         "multiply by bytes_per_value (2 for bfloat16 or float16, 4 for float32)")
def _bytes_bytes():
    return _bytes_variant("no_bytes")


@mistake("kv_cache_bytes", "per_token",
         "the memory of one token is returned: num_tokens is ignored",
         "multiply by num_tokens: the cache grows with every token")
def _bytes_tokens():
    return _bytes_variant("no_tokens")


@mistake("kv_cache_bytes", "returns_float",
         "the number of bytes is returned as a float, not a Python int",
         "multiply integers only (no / and no float()): the result is an exact int")
def _bytes_float():
    return _bytes_variant("float")


@mistake("kv_cache_bytes", "returns_tensor",
         "the number of bytes is returned as a tensor, not a Python int",
         "compute with Python ints (or call .item() and int())")
def _bytes_tensor():
    return _bytes_variant("tensor")


@mistake("kv_cache_bytes", "in_gigabytes",
         "the result is divided by 1e9 (gigabytes): the function returns bytes",
         "return the number of bytes; divide by 1e9 only when printing")
def _bytes_gb():
    return _bytes_variant("gigabytes")


# --- known mistakes: padding_mask -------------------------------------------------------------------------


def _padding_variant(how: str):
    def padding_mask(lengths, num_tokens, device=None):
        lengths = lengths.to(device)
        pos = torch.arange(num_tokens, device=device)
        if how == "first_length":
            lengths = lengths[:1].expand(len(lengths))
        if how == "left":
            mask = pos[None, :] >= num_tokens - lengths[:, None]
        elif how == "off_by_one":
            mask = pos[None, :] <= lengths[:, None]
        else:
            mask = pos[None, :] < lengths[:, None]
        if how == "inverted":
            mask = ~mask
        if how == "ignored":
            mask = torch.ones_like(mask)
        if how == "transposed":
            mask = mask.T
        if how == "float":
            mask = mask.float()
        if how == "pairwise":
            mask = mask[:, :, None] & mask[:, None, :]
        return mask
    return {"padding_mask": padding_mask}


@mistake("padding_mask", "inverted",
         "the mask is True on the padding: this course's masks are True where a query may attend",
         "positions < lengths[:, None] (True on the real tokens)")
def _pad_inverted():
    return _padding_variant("inverted")


@mistake("padding_mask", "off_by_one",
         "position lengths[b] counts as a real token (<= instead of <)",
         "a prompt of length L fills positions 0 .. L-1: positions < lengths[:, None]")
def _pad_off():
    return _padding_variant("off_by_one")


@mistake("padding_mask", "left_padding",
         "the real tokens are put at the end of each row (left padding); the spec pads on the right",
         "True where position < lengths[b]: arange(num_tokens)[None, :] < lengths[:, None]")
def _pad_left():
    return _padding_variant("left")


@mistake("padding_mask", "transposed",
         "the mask is (num_tokens, b) instead of (b, num_tokens)",
         "compare arange(num_tokens)[None, :] with lengths[:, None]: batch first")
def _pad_t():
    return _padding_variant("transposed")


@mistake("padding_mask", "float_mask",
         "the mask is a float tensor of 0s and 1s, not a boolean one",
         "return the comparison itself (a bool tensor), without .float() or .int()")
def _pad_float():
    return _padding_variant("float")


@mistake("padding_mask", "first_length_for_all",
         "every row uses the first prompt's length",
         "compare with each row's own length: lengths[:, None]")
def _pad_first():
    return _padding_variant("first_length")


@mistake("padding_mask", "lengths_ignored",
         "every position is True: the lengths are ignored",
         "True only where position < lengths[b]")
def _pad_ignored():
    return _padding_variant("ignored")


@mistake("padding_mask", "pairwise_mask",
         "a (b, num_tokens, num_tokens) query-by-key mask is returned instead of the (b, num_tokens) key mask",
         "return the (b, num_tokens) mask; broadcast it as mask[:, None, None, :] where it is used")
def _pad_pairwise():
    return _padding_variant("pairwise")
