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
from exercises.kernel import host_threads  # the test runner's threads (xdist's reader): not the code's
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

    with OpGuard(allow=host_threads()) as guard:
        torch.zeros(3).log_softmax(-1)
    assert guard.used == {"softmax": "Tensor.log_softmax"}
    from exercises.catalogue import ITEMS

    message = forbidden_message("softmax_stable", ITEMS["softmax_stable"].forbidden, set(), guard.used)
    assert message is not None and "Tensor.log_softmax" in message


def _start_raw_thread(module_name: str):
    """A thread started the way execnet starts xdist's reader (``_thread``, no ``threading.Thread`` object), its
    function from ``module_name``; returns (its ident, a function that lets it end)."""
    import _thread
    import threading

    started, release, box = threading.Event(), threading.Event(), []
    namespace = {"__name__": module_name}
    exec("def serve(started, release, box):\n    import threading\n    box.append(threading.get_ident())\n"
         "    started.set()\n    release.wait(30)\n", namespace)
    _thread.start_new_thread(namespace["serve"], (started, release, box))
    assert started.wait(10)
    return box[0], release.set


@pytest.mark.parametrize("module_name, is_host", [("execnet.gateway_base", True), ("__main__", False)])
def test_is_a_runners_raw_thread_a_host_thread_and_a_students_not(module_name, is_host):
    """xdist's reader thread is started with ``_thread`` (invisible to ``threading.enumerate``): the kernel check
    must know it for the runner's, as it knows Jupyter's; the same kind of thread of the student's stays theirs."""
    ident, release = _start_raw_thread(module_name)
    try:
        assert (ident in kernel.host_threads()) is is_host
    finally:
        release()
