"""Does the in-kernel check (nbgrader's hidden tests) judge like the pytest grader, and say why when it cannot?

Answers are executed the way IPython runs a cell: compiled under a file name that ``linecache`` holds,
so the check can read the whole answer cell back, as the pytest grader reads the submitted cell.
"""

from __future__ import annotations

import linecache
from itertools import count
from pathlib import Path

import pytest

import solutions
from exercises import kernel
from exercises.op_guard import OpGuard
from exercises.rules import forbidden_message, static_forbidden_calls

_cells = count()


def run_cell(source: str, namespace: dict | None = None) -> dict:
    """Execute ``source`` as IPython does: a file name per cell, registered in ``linecache``."""
    namespace = dict(vars(solutions)) if namespace is None else namespace
    filename = f"/tmp/ipykernel_0/{next(_cells)}.py"
    lines = source.splitlines(keepends=True)
    linecache.cache[filename] = (len(source), None, lines, filename)
    exec(compile(source, filename, "exec"), namespace)
    return namespace


ALIASED_SDPA_CLASS = '''
import torch
from torch import nn
from torch.nn.functional import scaled_dot_product_attention as attend  # bound before the monitor starts


class SelfAttention_v2(nn.Module):
    def __init__(self, d_in, d_out, qkv_bias=False):
        super().__init__()
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)

    def forward(self, x):
        return attend(self.W_query(x), self.W_key(x), self.W_value(x))
'''


def test_is_a_forbidden_call_in_a_notebook_class_found_by_the_kernel_check():
    """A class has no source file of its own in a notebook; the check must still read its cell."""
    namespace = run_cell(ALIASED_SDPA_CLASS)
    cls = namespace["SelfAttention_v2"]
    assert "scaled_dot_product_attention" in kernel.cell_source(cls)
    assert static_forbidden_calls(kernel.cell_source(cls)) == {"scaled_dot_product_attention"}
    with pytest.raises(AssertionError, match="may not use the built-in scaled_dot_product_attention"):
        kernel.check("SelfAttention_v2", namespace, seed=3)


def test_does_a_correct_notebook_class_pass_the_kernel_check():
    source = Path(solutions.lesson3_trainable.__file__).read_text(encoding="utf-8")
    namespace = run_cell(source, {"__name__": "__main__"})
    cell = kernel.cell_source(namespace["SelfAttention_v2"])
    assert "scaled_dot_product_attention" not in static_forbidden_calls(cell)
    assert kernel.check("SelfAttention_v2", namespace, seed=3) is None


def test_are_methods_static_methods_and_properties_searched():
    namespace = run_cell("import torch\nclass A:\n    @staticmethod\n    def s(x):\n"
                         "        return torch.softmax(x, -1)\n    @property\n    def p(self):\n        return 1\n", {})
    assert static_forbidden_calls(kernel.cell_source(namespace["A"])) == {"softmax"}
    assert kernel.cell_source(run_cell("X = 1\n", {})) is None  # nothing to go by: no source, no crash


def test_is_partial_credit_without_source_a_named_fault_not_a_silent_zero(monkeypatch):
    def unreadable(*args, **kwargs):
        raise OSError("No such file or directory: 'source/self_attention/01_attention_scores.ipynb'")

    monkeypatch.setattr("exercises.source.load_source", unreadable)
    # a softmax that ignores `dim`: right on 1-D input, wrong elsewhere: partial credit is due
    namespace = run_cell("import torch\ndef softmax_naive(x, dim=-1):\n    return torch.exp(x) / torch.exp(x).sum()\n")
    with pytest.raises(kernel.CourseNotFound, match="not of your answer"):
        kernel.check("softmax_naive", namespace, seed=1)


def test_is_tensor_log_softmax_reported_under_its_own_name():
    import torch

    with OpGuard() as guard:
        torch.zeros(3).log_softmax(-1)
    assert guard.used == {"softmax": "Tensor.log_softmax"}
    from exercises.catalogue import ITEMS

    message = forbidden_message("softmax_stable", ITEMS["softmax_stable"].forbidden, set(), guard.used)
    assert message is not None and "Tensor.log_softmax" in message
