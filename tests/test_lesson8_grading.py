"""Lesson 8's grading rules that the mistake bank cannot show (it runs without the operation monitor):
a cached forward must use the cache, and GQA and safe_softmax may not call a built-in softmax.

The cached cases of ``GroupedQueryAttention`` feed tokens one at a time and carry a ``max_numel`` of half the
``(b, h, n, n)`` score matrix of the whole sequence (``exercises/lessons/lesson8_inference.py``). Here an
answer that keeps the inputs on the cache and recomputes everything at every step (right values, no use of
the cached keys) loses exactly those cases, in both dtypes, through ``exercises.kernel.check`` (which runs the
same monitor as the worker); the reference passes every case under the same limits.
"""

from __future__ import annotations

import dataclasses
import itertools
import linecache

import pytest

import solutions
from exercises import kernel
from exercises.catalogue import ITEMS

_cells = itertools.count()

RECOMPUTES = '''import torch

_Right = GroupedQueryAttention


class GroupedQueryAttention(_Right):
    """Right values, but the cache only stores the inputs: every step recomputes the whole sequence."""

    def forward(self, x, cache=None):
        if cache is None:
            return super().forward(x)
        b, n, _ = x.shape
        cache.history = x if not hasattr(cache, "history") else torch.cat([cache.history, x], dim=1)
        keys = self.W_key(x).view(b, n, self.num_kv_groups, self.head_dim).transpose(1, 2)
        cache.append(keys, keys)  # so that len(cache) counts the tokens
        return super().forward(cache.history)[:, -n:]
'''

BUILTIN_SOFTMAX = '''import torch


def safe_softmax(scores, mask):
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return torch.nan_to_num(weights, nan=0.0)
'''


def run_cell(source: str) -> dict:
    """Execute an answer cell as IPython does (its text in ``linecache``), after the reference's names."""
    namespace = dict(vars(solutions))
    filename = f"/tmp/ipykernel_lesson8/{next(_cells)}.py"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    exec(compile(source, filename, "exec"), namespace)
    return namespace


def _without_limits(item):
    def build(gen, dtype):
        cases = item.build(gen, dtype)
        for case in cases:
            case.max_numel = None
        return cases
    return dataclasses.replace(item, build=build)


def test_are_the_cached_token_by_token_cases_limited():
    limited = [c for c in ITEMS["GroupedQueryAttention"].cases(0, "float64") if c.max_numel is not None]
    assert {c.name for c in limited} == {"cache_token_by_token", "cache_token_by_token_multi_query"}
    for case in limited:  # the whole sequence's scores, (b, h, n, n), would be twice the bound
        b, n = case.inputs["x"].shape[:2]
        heads = next(s for s in case.program if s["op"] == "new")["kwargs"]["num_heads"]["lit"]
        assert b * heads * n * n == 2 * case.max_numel


def test_does_the_reference_pass_with_the_limits():
    assert kernel.check("GroupedQueryAttention", dict(vars(solutions)), seed=3) is None


def test_does_recomputing_everything_fail_only_the_limited_cases(monkeypatch, capsys):
    item = ITEMS["GroupedQueryAttention"]
    monkeypatch.setitem(ITEMS, "GroupedQueryAttention", _without_limits(item))
    assert kernel.check("GroupedQueryAttention", run_cell(RECOMPUTES), seed=3) is None  # its values are right
    monkeypatch.setitem(ITEMS, "GroupedQueryAttention", item)
    capsys.readouterr()
    partial = kernel.check("GroupedQueryAttention", run_cell(RECOMPUTES), seed=3)
    assert partial is not None and 0 < partial < kernel.item_points("GroupedQueryAttention")
    printed = capsys.readouterr().out
    assert "4 hidden check(s) failed" in printed  # two limited cases, in float64 and float32
    assert "case cache_token_by_token: `GroupedQueryAttention` created a tensor of shape (8, 9, 9)" in printed  # step 9


@pytest.mark.parametrize("item, source", [("safe_softmax", BUILTIN_SOFTMAX)])
def test_is_a_builtin_softmax_refused(item, source):
    with pytest.raises(AssertionError) as caught:
        kernel.check(item, run_cell(source), seed=3)
    assert "may not use the built-in softmax" in str(caught.value)


SDPA_INSIDE = '''import torch
import torch.nn.functional as F

_Right = GroupedQueryAttention


class GroupedQueryAttention(_Right):
    def forward(self, x, cache=None):
        b, n, _ = x.shape
        q = self.W_query(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.W_key(x).view(b, n, self.num_kv_groups, self.head_dim).transpose(1, 2)
        v = self.W_value(x).view(b, n, self.num_kv_groups, self.head_dim).transpose(1, 2)
        if cache is not None:
            k, v = cache.append(k, v)
        k, v = (t.repeat_interleave(self.group_size, dim=1) for t in (k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None or n > 1)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.d_out))
'''


def test_is_a_builtin_attention_inside_gqa_refused():
    with pytest.raises(AssertionError) as caught:
        kernel.check("GroupedQueryAttention", run_cell(SDPA_INSIDE), seed=3)
    assert "may not use the built-in scaled_dot_product_attention" in str(caught.value)
