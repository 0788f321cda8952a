"""Does the operation monitor see every route to a forbidden built-in, and nothing a right answer does?

Each no-shortcut rule rests on ``exercises/op_guard.py``: a ``TorchFunctionMode`` (torch's Python API) and
a ``TorchDispatchMode`` (operators below it) mapped to families by one table. Here every route we know
to softmax, to scaled dot-product attention and to ``nn.MultiheadAttention`` is written as a student's
answer cell and graded by the real in-kernel check (the same judge and monitor as the worker); the slow
tests at the end grade some of them through the real worker. Every correct alternative answer and every
reference solution runs under the monitor without being flagged; ``Case.max_numel`` fails an answer that
builds the full score matrix and passes the reference; code that switches the monitor off is caught.
"""

from __future__ import annotations

import copy
import dataclasses
import linecache
import math
from itertools import count
from pathlib import Path

import pytest
import torch

import solutions
from autograder.sandbox import Limits
from exercises import kernel, rules
from exercises import program as program_module
from exercises.cases import BUILTIN_SDPA, BUILTIN_SOFTMAX
from exercises.catalogue import ITEMS
from exercises.judge import run_on
from exercises.kernel import host_threads  # the test runner's threads (xdist's reader): not the code's
from exercises.op_guard import MHA, SDPA, SOFTMAX, OpGuard, family_of, install_tripwires
from exercises.program import run_program
from exercises.rules import static_forbidden_calls, static_tampering

_cells = count()
ALTERNATIVES = sorted((Path(__file__).resolve().parent / "fixtures" / "alternatives").glob("*.py"))


def run_cell(source: str) -> dict:
    """Execute an answer cell as IPython does (a file name in ``linecache``), in a namespace seeded from the
    reference package as a notebook's earlier cells would leave it."""
    namespace = dict(vars(solutions))
    filename = f"/tmp/ipykernel_guard/{next(_cells)}.py"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    exec(compile(source, filename, "exec"), namespace)
    return namespace


def broken_rule(item: str, source: str) -> str:
    """The in-kernel check's message for an answer that breaks ``item``'s rule (it must raise with it)."""
    with pytest.raises(AssertionError) as caught:
        kernel.check(item, run_cell(source), seed=5)
    return str(caught.value)


# --- the table ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, family", [
    ("softmax", SOFTMAX), ("log_softmax", SOFTMAX), ("_softmax", SOFTMAX), ("aten::_safe_softmax", SOFTMAX),
    ("_masked_softmax.default", SOFTMAX), ("special_softmax", SOFTMAX), ("softmin", SOFTMAX),
    ("scaled_dot_product_attention", SDPA), ("_scaled_dot_product_flash_attention_for_cpu", SDPA),
    ("_scaled_dot_product_attention_math", SDPA), ("_scaled_dot_product_efficient_attention", SDPA),
    ("_flash_attention_forward", SDPA), ("_efficient_attention_backward", SDPA), ("_fused_sdp_choice", SDPA),
    ("multi_head_attention_forward", MHA), ("_native_multi_head_attention", MHA), ("MultiheadAttention", MHA),
    ("logsumexp", None), ("exp", None), ("softplus", None), ("matmul", None), ("softmax_stable", None),
])
def test_does_one_table_name_the_family_of_both_levels(name, family):
    assert family_of(name) == family


def test_does_the_monitor_import_only_the_standard_library_and_torch():
    """The worker runs a copy of the file with the repository out of reach."""
    import ast
    import sys

    tree = ast.parse(Path(kernel.__file__).with_name("op_guard.py").read_text(encoding="utf-8"))
    nodes = list(ast.walk(tree))
    roots = {alias.name.split(".")[0] for node in nodes if isinstance(node, ast.Import) for alias in node.names}
    roots |= {node.module.split(".")[0] for node in nodes if isinstance(node, ast.ImportFrom) and node.module}
    assert roots - {"__future__", "torch"} <= set(sys.stdlib_module_names), roots


def test_do_the_constants_name_families():
    assert BUILTIN_SOFTMAX == (SOFTMAX,) and BUILTIN_SDPA == (SDPA,)
    assert ITEMS["MultiHeadAttention"].forbidden == (SDPA, MHA)


# --- every route, seen by the monitor itself ----------------------------------------------------------------

X = torch.randn(2, 3, 5, dtype=torch.float64)
Q = torch.randn(2, 2, 4, 8)
SOFTMAX_ROUTES = {
    "torch.softmax": lambda: torch.softmax(X, -1),
    "torch._softmax": lambda: torch._softmax(X, -1, False),
    "F.softmax": lambda: torch.nn.functional.softmax(X, -1),
    "F.log_softmax": lambda: torch.nn.functional.log_softmax(X, -1),
    "Tensor.softmax": lambda: X.softmax(-1),
    "Tensor.log_softmax": lambda: X.log_softmax(-1),
    "torch.special.softmax": lambda: torch.special.softmax(X, -1),
    "nn.Softmax": lambda: torch.nn.Softmax(dim=-1)(X),
    "nn.LogSoftmax": lambda: torch.nn.LogSoftmax(dim=-1)(X),
    "F.softmin": lambda: torch.nn.functional.softmin(-X, -1),
    "_VariableFunctions": lambda: torch._C._VariableFunctions.softmax(X, -1),
    "aten._softmax": lambda: torch.ops.aten._softmax(X, -1, False),
    "aten._softmax.default": lambda: torch.ops.aten._softmax.default(X, -1, False),
    "aten.softmax.int": lambda: torch.ops.aten.softmax.int(X, -1),
    "aten._safe_softmax": lambda: torch.ops.aten._safe_softmax(X, -1),
    "aten._log_softmax": lambda: torch.ops.aten._log_softmax(X, -1, False),
    "aten._masked_softmax": lambda: torch.ops.aten._masked_softmax(X, torch.zeros_like(X, dtype=torch.bool), -1),
    "getattr": lambda: getattr(torch.nn.functional, "soft" + "max")(X, -1),
    "F.__dict__": lambda: torch.nn.functional.__dict__["softmax"](X, -1),
    "importlib": lambda: __import__("importlib").import_module("torch.nn.functional").softmax(X, -1),
    "gumbel_softmax": lambda: torch.nn.functional.gumbel_softmax(X, tau=1.0),
}
SDPA_ROUTES = {
    "F.scaled_dot_product_attention": lambda: torch.nn.functional.scaled_dot_product_attention(Q, Q, Q),
    "float64": lambda: torch.nn.functional.scaled_dot_product_attention(Q.double(), Q.double(), Q.double()),
    "is_causal": lambda: torch.nn.functional.scaled_dot_product_attention(Q, Q, Q, is_causal=True),
    "torch._C._nn": lambda: torch._C._nn.scaled_dot_product_attention(Q, Q, Q),
    "getattr": lambda: getattr(torch.nn.functional, "scaled_dot_product_" + "attention")(Q, Q, Q),
    "aten.scaled_dot_product_attention": lambda: torch.ops.aten.scaled_dot_product_attention(Q, Q, Q),
    "aten._scaled_dot_product_attention_math": lambda: torch.ops.aten._scaled_dot_product_attention_math(Q, Q, Q),
    "aten._scaled_dot_product_flash_attention_for_cpu":
        lambda: torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(Q, Q, Q),
    "aten._fused_sdp_choice": lambda: torch.ops.aten._fused_sdp_choice(Q, Q, Q),
}


def _mha_module():
    return torch.nn.MultiheadAttention(8, 2, batch_first=True)


MHA_ROUTES = {
    "nn.MultiheadAttention": lambda: _mha_module()(Q[0], Q[0], Q[0]),
    "need_weights=False": lambda: _mha_module()(Q[0], Q[0], Q[0], need_weights=False),
    "eval, no_grad (the fast path)": lambda: _no_grad(_mha_module().eval()),
    "nn.TransformerEncoderLayer": lambda: torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)(Q[0]),
}


def _no_grad(module):
    with torch.no_grad():
        return module(Q[0], Q[0], Q[0])


@pytest.mark.parametrize("family, route", [(SOFTMAX, r) for r in SOFTMAX_ROUTES] + [(SDPA, r) for r in SDPA_ROUTES]
                         + [(MHA, r) for r in MHA_ROUTES])
def test_does_the_monitor_see_every_route(family, route):
    routes = {SOFTMAX: SOFTMAX_ROUTES, SDPA: SDPA_ROUTES, MHA: MHA_ROUTES}[family]
    with OpGuard(allow=host_threads()) as guard:
        routes[route]()
    assert family in guard.used, guard.report()
    assert guard.tampered is None
    assert torch._C._len_torch_function_stack() == 0 and torch._C._len_torch_dispatch_stack() == 0


@pytest.mark.parametrize("allowed", [
    lambda: (X - torch.logsumexp(X, -1, keepdim=True)).exp(),
    lambda: torch.exp(X - X.amax(-1, keepdim=True)) / torch.exp(X - X.amax(-1, keepdim=True)).sum(-1, keepdim=True),
    lambda: torch.nn.functional.softplus(X) + torch.sigmoid(X) + torch.tanh(X),
    lambda: torch.nn.functional.dropout(X, 0.5) @ X.transpose(-1, -2),
    lambda: torch.logaddexp(X, X).masked_fill(X > 0, float("-inf")),
], ids=["logsumexp", "max_exp_sum", "activations", "dropout_matmul", "logaddexp_masked_fill"])
def test_is_nothing_flagged_in_allowed_code(allowed):
    with OpGuard(allow=host_threads()) as guard:
        allowed()
    assert guard.used == {} and guard.tampered is None


def test_does_the_monitor_see_a_custom_backward():
    """Operators autograd runs during the backward pass of a custom ``autograd.Function`` are seen."""
    class Sneaky(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * torch.softmax(x, -1)

    x = X.clone().requires_grad_()
    with OpGuard(max_numel=10, allow=host_threads()) as guard:
        y = Sneaky.apply(x)
        y.sum().backward()
    assert SOFTMAX in guard.used


# --- max_numel ----------------------------------------------------------------------------------------------


SMALL, LARGE = torch.randn(8, 2), torch.randn(8, 8)  # made before the block: 16 and 64 elements


@pytest.mark.parametrize("build, shape", [
    (lambda: SMALL @ SMALL.T, (8, 8)),
    (lambda: (SMALL @ SMALL.T).reshape(-1)[:3], (8, 8)),  # the first op already made it
    (lambda: torch.zeros(64)[:3] + SMALL.sum(), (64,)),
    (lambda: torch.arange(8.0).reshape(1, 8).expand(8, 8)[0], (8, 8)),  # a view without memory of its own
    (lambda: LARGE.reshape(-1)[:3], (64,)),  # a flattened matrix is still a matrix
    (lambda: LARGE[:, :4], None),  # a slice below the bound is fine
], ids=["matmul", "flattened", "zeros", "expand_view", "reshape", "small_slice"])
def test_is_every_output_above_max_numel_recorded(build, shape):
    with OpGuard(max_numel=40, allow=host_threads()) as guard:
        build()
    if shape is None:
        assert guard.too_big is None
    else:
        assert guard.too_big is not None and guard.too_big[0] == shape and guard.too_big[1] == math.prod(shape)


def test_is_a_large_tensor_in_a_custom_backward_recorded():
    class Recompute(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q):
            ctx.save_for_backward(q)
            return q.clone()

        @staticmethod
        def backward(ctx, grad):
            (q,) = ctx.saved_tensors
            scores = q @ q.transpose(-1, -2)  # (n, n): the matrix the rule forbids, in the backward pass only
            return grad + scores.sum() * 0

    q = torch.randn(16, 2, requires_grad=True)
    with OpGuard(max_numel=100, allow=host_threads()) as guard:
        out = Recompute.apply(q)
    assert guard.too_big is None
    with OpGuard(max_numel=100, allow=host_threads()) as guard:
        out.sum().backward()
    assert guard.too_big is not None and guard.too_big[0] == (16, 16)


# --- tampering ----------------------------------------------------------------------------------------------

TAMPERING = {
    "pop the function mode": "torch._C._pop_torch_function_stack()",
    "pop the dispatch mode": "torch._C._pop_torch_dispatch_stack(None)",
    "disable torch functions (left on)": "torch._C.DisableTorchFunction().__enter__()",
    "disable torch functions around the call": (
        "with torch._C.DisableTorchFunction():\n        return F.scaled_dot_product_attention(Q, Q, Q)"),
    "disable dispatch around the call": "with torch._C._DisableTorchDispatch():\n        return torch.softmax(X, -1)",
    "disable current dispatch modes": (
        "with torch.utils._python_dispatch._disable_current_modes():\n        return torch.softmax(X, -1)"),
    "exclude the Python key": (
        "with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(torch._C.DispatchKey.Python)):\n"
        "        return torch.softmax(X, -1)"),
}


@pytest.mark.parametrize("how", TAMPERING)
def test_is_switching_the_monitor_off_recorded_and_undone(how):
    namespace = {"torch": torch, "F": torch.nn.functional, "Q": Q, "X": X}
    exec(f"def sneaky():\n    {TAMPERING[how]}\n", namespace)
    with OpGuard(allow=host_threads()) as guard:
        namespace["sneaky"]()
    assert guard.tampered, guard.report()
    # whatever the code did, the stacks and switches are as they were before the block
    assert torch._C._len_torch_function_stack() == 0 and torch._C._len_torch_dispatch_stack() == 0
    assert not torch._C._is_torch_function_all_disabled()
    with OpGuard(allow=host_threads()) as after:
        torch.softmax(X, -1)
    assert after.used == {SOFTMAX: "torch.softmax"} and after.tampered is None


def test_is_a_mode_the_code_leaves_behind_harmless_and_removed():
    """``torch.set_default_device`` pushes a function mode for good: not tampering (it hands calls on to the
    monitor), and gone after the call, as the worker's next calls need."""
    with OpGuard(allow=host_threads()) as guard:
        torch.set_default_device("cpu")
        torch.softmax(X, -1)
    assert guard.tampered is None and guard.used == {SOFTMAX: "torch.softmax"}
    assert torch._C._len_torch_function_stack() == 0 and torch._C._len_torch_dispatch_stack() == 0


@pytest.fixture
def tripwires():
    """torch's switches for the monitor wrapped, as the worker does before any student code (undone after)."""
    restore = install_tripwires(trusted=(program_module,))
    yield
    restore()


BOTH_OFF = {
    "both levels off at once, by obfuscated names": (
        "off = getattr(torch._C, '_Disable' + 'TorchDispatch')\n    with off(), torch._C.DisableTorchFunction():\n"
        "        return F.scaled_dot_product_attention(Q, Q, Q)"),
    "a kernel called below the Python key": (
        "keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)\n"
        "    return torch.ops.aten._softmax.default.redispatch(keys, X, -1, False)"),
}


@pytest.mark.parametrize("how", BOTH_OFF)
def test_does_a_tripwire_catch_what_neither_level_can_see(how, tripwires):
    namespace = {"torch": torch, "F": torch.nn.functional, "Q": Q, "X": X}
    exec(f"def sneaky():\n    {BOTH_OFF[how]}\n", namespace)
    with OpGuard(allow=host_threads()) as guard:
        namespace["sneaky"]()
    assert guard.used == {} and guard.tampered and guard.tampered.startswith("the code called"), guard.report()


def test_do_tripwires_let_torch_and_code_outside_a_guard_through(tripwires):
    with torch._C.DisableTorchFunction():  # no guard open: nothing to say
        pass
    with OpGuard(allow=host_threads()) as guard:
        for route in list(MHA_ROUTES.values()) + list(SDPA_ROUTES.values())[:4]:
            route()
        copy.deepcopy(torch.nn.Linear(2, 2))  # torch's own code, which uses some of the switches itself
        repr(X)
    assert guard.tampered is None, guard.report()


def test_are_the_monitor_switches_named_in_the_answer_cell_found():
    assert static_tampering("import torch\nwith torch._C.DisableTorchFunction():\n    pass\n") == {
        "DisableTorchFunction"}
    assert static_tampering("from torch.utils._python_dispatch import _disable_current_modes\n") == {
        "_disable_current_modes"}
    assert static_tampering("import torch\ny = torch.softmax(x, -1)\n") == set()


# --- the real in-kernel check, one answer cell per route ------------------------------------------------------

SOFTMAX_CELLS = {
    "torch.softmax": "return torch.softmax(x, dim=dim)",
    "F.softmax": "return F.softmax(x, dim=dim)",
    "Tensor.softmax": "return x.softmax(dim)",
    "Tensor.log_softmax": "return x.log_softmax(dim).exp()",
    "torch.special.softmax": "return torch.special.softmax(x, dim)",
    "nn.Softmax": "return torch.nn.Softmax(dim=dim)(x)",
    "F.softmin": "return F.softmin(-x, dim=dim)",
    "aten._softmax": "return torch.ops.aten._softmax(x, dim, False)",
    "aten._safe_softmax": "return torch.ops.aten._safe_softmax(x, dim)",
    "aten._log_softmax": "return torch.ops.aten._log_softmax(x, dim, False).exp()",
    "getattr": "return getattr(F, 'soft' + 'max')(x, dim=dim)",
    "F.__dict__": "return F.__dict__['soft' + 'max'](x, dim=dim)",
    "importlib": "return importlib.import_module('torch.nn.' + 'functional').softmax(x, dim=dim)",
    "_VariableFunctions": "return torch._C._VariableFunctions.softmax(x, dim)",
}
SDPA_CELLS = {
    "F.scaled_dot_product_attention": "out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)",
    "torch._C._nn": "out = torch._C._nn.scaled_dot_product_attention(q, k, v, attn_mask=mask)",
    "getattr": "out = getattr(F, 'scaled_dot_product_' + 'attention')(q, k, v, attn_mask=mask)",
    "aten.scaled_dot_product_attention": "out = torch.ops.aten.scaled_dot_product_attention(q, k, v, mask)",
    "aten._scaled_dot_product_attention_math": (
        "out = torch.ops.aten._scaled_dot_product_attention_math(q, k, v, mask)[0]"),
    "F.multi_head_attention_forward": (
        "import torch.nn.functional as G\n    G.multi_head_attention_forward  # named, then reached by __dict__\n"
        "    out = G.__dict__['scaled_dot_product_attention'](q, k, v, attn_mask=mask)"),
}
SDPA_TAIL = ("\n    scores = (q @ k.transpose(-2, -1)) / k.shape[-1] ** 0.5\n"
             "    if mask is not None:\n        scores = scores.masked_fill(~mask, float('-inf'))\n"
             "    return out, torch.softmax(scores, dim=-1)\n")


@pytest.mark.parametrize("route", SOFTMAX_CELLS)
def test_is_every_softmax_route_caught_for_softmax_stable(route):
    cell = (f"import importlib\nimport torch\nimport torch.nn.functional as F\n"
            f"def softmax_stable(x, dim=-1):\n    {SOFTMAX_CELLS[route]}\n")
    message = broken_rule("softmax_stable", cell)
    assert "may not use the built-in softmax" in message and "detected while running" in message, message


@pytest.mark.parametrize("route", SDPA_CELLS)
def test_is_every_sdpa_route_caught_for_scaled_dot_product_attention(route):
    cell = (f"import torch\nimport torch.nn.functional as F\n"
            f"def scaled_dot_product_attention(q, k, v, mask=None):\n    {SDPA_CELLS[route]}{SDPA_TAIL}")
    message = broken_rule("scaled_dot_product_attention", cell)
    assert "may not use the built-in scaled_dot_product_attention" in message, message
    assert "detected while running" in message


def test_does_a_lesson_2_answer_that_uses_softmax_pass():
    """Lesson 2 allows softmax (SDPA's math path shows only ``_safe_softmax`` below the Python API)."""
    cell = ("import torch\ndef scaled_dot_product_attention(q, k, v, mask=None):\n"
            "    out = None" + SDPA_TAIL.replace("return out, torch.softmax(scores, dim=-1)",
                                                 "w = torch.softmax(scores, dim=-1)\n    return w @ v, w"))
    assert kernel.check("scaled_dot_product_attention", run_cell(cell), seed=5) is None


MHA_FORWARDS = {
    "nn.MultiheadAttention": """
        mha = nn.MultiheadAttention(self.d_out, self.num_heads, batch_first=True, bias=False).to(x.dtype)
        mha.in_proj_weight.data = torch.cat([self.W_query.weight, self.W_key.weight, self.W_value.weight])
        mha.out_proj = self.out_proj
        n = x.shape[1]
        return mha(x, x, x, attn_mask=~self.mask[:n, :n], need_weights=False)[0]""",
    "F.multi_head_attention_forward": """
        n = x.shape[1]
        w = torch.cat([self.W_query.weight, self.W_key.weight, self.W_value.weight])
        y, _ = getattr(F, 'multi_head_' + 'attention_forward')(
            x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), self.d_out, self.num_heads, w, None, None,
            None, False, 0.0, self.out_proj.weight, self.out_proj.bias, training=False, need_weights=False,
            attn_mask=~self.mask[:n, :n])
        return y.transpose(0, 1)""",
    "F.scaled_dot_product_attention": """
        q, k, v = (split_heads(w(x), self.num_heads) for w in (self.W_query, self.W_key, self.W_value))
        return self.out_proj(merge_heads(torch._C._nn.scaled_dot_product_attention(q, k, v, is_causal=True)))""",
}


@pytest.mark.parametrize("route", MHA_FORWARDS)
def test_is_every_attention_route_caught_for_multi_head_attention(route):
    cell = ("import torch\nfrom torch import nn\nimport torch.nn.functional as F\n_Given = MultiHeadAttention\n"
            "class MultiHeadAttention(_Given):\n    def forward(self, x):" + MHA_FORWARDS[route] + "\n")
    message = broken_rule("MultiHeadAttention", cell)
    family = SDPA if "scaled" in route else MHA
    assert f"may not use the built-in {family}" in message and "detected while running" in message, message


# --- lesson 8 (its rules are set by the lesson; here a synthetic version of them) ------------------------------


def _online_with_rules(item):
    """``online_softmax_attention`` as lesson 8 rules it: no built-in softmax or SDPA, and on cases with keys
    in several blocks, no tensor as large as the (n_q, n_k) score matrix of the whole batch."""
    def build(gen, dtype):
        cases = item.build(gen, dtype)
        for case in cases:
            q, k, v = case.inputs["q"], case.inputs["k"], case.inputs["v"]
            block = next(step for step in case.program if step["op"] == "call")["kwargs"]["block_size"]["lit"]
            batch, n_q, n_k = math.prod(q.shape[:-2]), q.shape[-2], k.shape[-2]
            if n_k > block and max(q.shape[-1], v.shape[-1]) < n_k:
                case.max_numel = batch * n_q * n_k - 1
        return cases
    return dataclasses.replace(item, build=build, forbidden=BUILTIN_SOFTMAX + BUILTIN_SDPA)


@pytest.fixture
def lesson8_rules(monkeypatch):
    ruled = _online_with_rules(ITEMS["online_softmax_attention"])
    monkeypatch.setitem(ITEMS, "online_softmax_attention", ruled)
    assert any(c.max_numel for c in ruled.cases(5, "float64"))
    return ruled


FULL_SCORES = """import torch
def online_softmax_attention(q, k, v, block_size=64, causal=False):
    scores = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5  # (..., n_q, n_k): the whole matrix at once
    if causal:
        n_q, n_k = scores.shape[-2:]
        scores = scores.masked_fill(torch.ones(n_q, n_k, dtype=torch.bool).triu(1), float('-inf'))
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    return (weights / weights.sum(-1, keepdim=True)) @ v
"""


def test_does_a_full_score_answer_fail_max_numel_but_get_full_marks_without_it(lesson8_rules, monkeypatch, capsys):
    """``max_numel`` on its own (the tiled algorithm's rule, which fails this answer as a whole, is off here)."""
    monkeypatch.setattr(rules, "span_rule", lambda case: None)
    monkeypatch.setitem(ITEMS, "online_softmax_attention", dataclasses.replace(lesson8_rules, build=_no_limit(
        lesson8_rules.build)))
    assert kernel.check("online_softmax_attention", run_cell(FULL_SCORES), seed=5) is None  # right values
    monkeypatch.setitem(ITEMS, "online_softmax_attention", lesson8_rules)
    capsys.readouterr()
    partial = kernel.check("online_softmax_attention", run_cell(FULL_SCORES), seed=5)
    limited = {c.name for c in lesson8_rules.cases(5, "float64") if c.max_numel is not None}
    assert partial is not None and 0 < partial < kernel.item_points("online_softmax_attention")
    printed = capsys.readouterr().out
    assert f"{2 * len(limited)} hidden check(s) failed" in printed  # every limited case, in both dtypes
    assert ("case block_divides_n: `online_softmax_attention` created a tensor of shape (2, 16, 16) (512 elements, "
            "more than the 511 this case allows, in aten.bmm): this lesson's functions must never build the full "
            "(n_q, n_k) score matrix; work block by block") in printed


def _no_limit(built):
    def build(gen, dtype):
        cases = built(gen, dtype)
        for case in cases:
            case.max_numel = None
        return cases
    return build


def test_does_the_reference_pass_the_lesson_8_rules(lesson8_rules):
    namespace = dict(vars(solutions))
    assert kernel.check("online_softmax_attention", namespace, seed=5) is None


@pytest.mark.parametrize("route", ["return F.scaled_dot_product_attention(q, k, v, is_causal=causal)",
                                   "return torch.ops.aten._scaled_dot_product_attention_math(q, k, v, "
                                   "is_causal=causal)[0]",
                                   "w = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(-1)\n    return w @ v"])
def test_is_a_built_in_caught_for_online_softmax_attention(lesson8_rules, route):
    cell = ("import torch\nimport torch.nn.functional as F\n"
            f"def online_softmax_attention(q, k, v, block_size=64, causal=False):\n    {route}\n")
    message = broken_rule("online_softmax_attention", cell)
    assert "may not use the built-in" in message and "detected while running" in message, message


def test_is_tampering_caught_by_the_in_kernel_check():
    cell = ("import torch\nimport torch.nn.functional as F\n"
            "def scaled_dot_product_attention(q, k, v, mask=None):\n"
            "    off = getattr(torch._C, 'Disable' + 'TorchFunction')\n"
            "    with off():\n        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)" + SDPA_TAIL)
    message = broken_rule("scaled_dot_product_attention", cell)
    assert "switched off the grader's operation monitor" in message, message


# --- nothing right is flagged -------------------------------------------------------------------------------


def _ruled(item) -> bool:
    return bool(item.forbidden)


@pytest.mark.parametrize("path", [p for p in ALTERNATIVES if _ruled(ITEMS[p.stem.split("__")[0]])],
                         ids=lambda p: p.stem)
def test_is_no_alternative_answer_flagged_by_the_monitor(path, tripwires):
    item = ITEMS[path.stem.split("__")[0]]
    source = path.read_text(encoding="utf-8")
    assert not (static_forbidden_calls(source) & set(item.forbidden)) and not static_tampering(source)
    namespace = dict(vars(solutions))
    exec(compile(source, str(path), "exec"), namespace)
    for dtype in item.variants("cpu"):
        for case in item.cases(0, dtype):
            with OpGuard(case.max_numel, rules.case_guard(item, case)["span"], allow=host_threads()) as guard:
                torch.manual_seed(0)
                run_program(case.program, namespace, case.inputs, "cpu", dtype)
            report = guard.report()
            assert not (set(report["used"]) & set(item.forbidden)), (case.name, report)
            assert report["tampered"] is None and report["too_big"] is None, (case.name, report)
            assert report["wide"] is None and report["exported"] is None, (case.name, report)


@pytest.mark.parametrize("path", [p for p in ALTERNATIVES if p.stem.startswith("online_softmax_attention__")],
                         ids=lambda p: p.stem)
def test_do_the_online_softmax_alternatives_keep_to_the_lesson_8_rules(lesson8_rules, path):
    source = path.read_text(encoding="utf-8")
    namespace = run_cell(source)
    assert kernel.check("online_softmax_attention", namespace, seed=5) is None


@pytest.mark.parametrize("name", [name for name, item in ITEMS.items() if _ruled(item)])
def test_is_no_reference_solution_flagged(name, tripwires):
    item = ITEMS[name]
    for dtype in item.variants("cpu"):
        for case in item.cases(1, dtype):
            with OpGuard(case.max_numel, rules.case_guard(item, case)["span"], allow=host_threads()) as guard:
                torch.manual_seed(0)
                run_on(vars(solutions), case, "cpu", dtype)
            report = guard.report()
            assert not (set(report["used"]) & set(item.forbidden)) and report["tampered"] is None, report
            assert report["too_big"] is None and report["wide"] is None and report["exported"] is None, report


# --- through the real worker (the copy of op_guard.py in the sandbox) ----------------------------------------

WORKER_LIMITS = Limits(call_timeout=20.0, cell_timeout=20.0, startup_timeout=60.0, memory_bytes=3 << 30)


def _grade(tmp_path: Path, notebook: str, overrides: dict[str, str], warm: bool = False) -> dict[str, list]:
    """Grade through a cold worker, or (``warm``) through one forked from a warm zygote, as the CLI does."""
    from grader_fixtures import write_submission

    from autograder.grading import grade_notebook
    from autograder.pool import WorkerPool
    from autograder.runner import default_bwrap

    path = write_submission(tmp_path / "student", notebook, overrides)
    pool = WorkerPool(WORKER_LIMITS, default_bwrap()) if warm else None
    try:
        result = grade_notebook(notebook, path, seed=7, devices=["cpu"], limits=WORKER_LIMITS,
                                use_bwrap=default_bwrap(), pool=pool)
    finally:
        if pool is not None:
            pool.shutdown()
    rows: dict[str, list] = {}
    for row in result.outcomes:
        if row.device == "cpu":
            rows.setdefault(row.item, []).append(row)
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "forked"])
def test_are_hidden_routes_and_tampering_caught_in_the_worker(tmp_path, warm):
    rows = _grade(tmp_path, "01_attention_scores.ipynb", warm=warm, overrides={
        "softmax_stable": ("import torch\ndef softmax_stable(x, dim=-1):\n"
                           "    return torch.ops.aten._softmax(x, dim, False)\n"),
        # both levels off at once, by obfuscated names: only the worker's tripwires can see it
        "softmax_naive": ("import torch\ndef softmax_naive(x, dim=-1):\n"
                          "    with getattr(torch._C, '_Disable' + 'TorchDispatch')(), "
                          "getattr(torch._C, 'Disable' + 'TorchFunction')():\n"
                          "        e = torch.exp(x)\n    return e / e.sum(dim, keepdim=True)\n"),
    })
    for row in rows["softmax_stable"]:
        assert row.score == 0 and row.forbidden, row.message
        assert "may not use the built-in softmax (reached through torch.ops.aten._softmax)" in row.message
    for row in rows["softmax_naive"]:
        assert row.score == 0 and row.forbidden and "switched off the grader's operation monitor" in row.message
    for item in ("attention_scores_loop", "attention_scores", "context_vectors"):
        assert all(row.status == "passed" for row in rows[item]), rows[item]


@pytest.mark.slow
def test_are_sdpa_and_multihead_attention_caught_in_the_worker(tmp_path):
    sdpa = ("import torch\ndef scaled_dot_product_attention(q, k, v, mask=None):\n"
            "    out = getattr(torch._C._nn, 'scaled_dot_product_' + 'attention')(q, k, v, attn_mask=mask)" + SDPA_TAIL)
    rows = _grade(tmp_path / "l2", "02_scaled_dot_product_attention.ipynb", {"scaled_dot_product_attention": sdpa})
    assert all(r.score == 0 and "may not use the built-in scaled_dot_product_attention (reached through "
               "torch._C._nn.scaled_dot_product_attention)" in r.message
               for r in rows["scaled_dot_product_attention"]), rows["scaled_dot_product_attention"]
    assert all(r.status == "passed" for r in rows["project_qkv"])
    mha = ("import torch\nfrom torch import nn\n\n"
           "class MultiHeadAttention(nn.Module):\n"
           "    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):\n"
           "        super().__init__()\n"
           "        self.d_out, self.num_heads = d_out, num_heads\n"
           "        if d_out % num_heads:\n            raise ValueError('d_out must be divisible by num_heads')\n"
           "        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)\n"
           "        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)\n"
           "        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)\n"
           "        self.out_proj = nn.Linear(d_out, d_out)\n"
           "        self.register_buffer('mask', torch.ones(context_length, context_length).tril().bool())\n\n"
           "    def forward(self, x):" + MHA_FORWARDS["nn.MultiheadAttention"] + "\n")
    rows = _grade(tmp_path / "l5", "05_multi_head_attention.ipynb", {"MultiHeadAttention": mha})
    assert all(r.score == 0 and "may not use the built-in MultiheadAttention (reached through torch.nn.functional."
               "multi_head_attention_forward)" in r.message and "detected while running" in r.message
               for r in rows["MultiHeadAttention"]), rows["MultiHeadAttention"]


@pytest.mark.slow
def test_does_max_numel_fail_a_full_score_answer_in_the_worker_and_pass_the_reference(tmp_path, lesson8_rules,
                                                                                       monkeypatch):
    """``max_numel`` on its own (the tiled algorithm's rule is off here: tests/test_monitor_attacks.py has it)."""
    monkeypatch.setattr(rules, "span_rule", lambda case: None)
    rows = _grade(tmp_path / "full", "09_flash_attention_forward.ipynb", {"online_softmax_attention": FULL_SCORES})
    limited = {c.name for c in lesson8_rules.cases(7, "float64") if c.max_numel is not None}
    for row in rows["online_softmax_attention"]:
        assert row.status == "failed" and 0 < row.score < row.max_score and not row.forbidden
        assert row.cases_passed == row.cases_total - len(limited)
        assert "must never build the full (n_q, n_k) score matrix; work block by block" in row.message
    rows = _grade(tmp_path / "perfect", "09_flash_attention_forward.ipynb", {})
    assert all(r.status == "passed" for item in rows.values() for r in item), rows


# --- the monitor's record written by the code: every shape of forged post ---------------------------------------
# The record lives in an audit hook the code cannot remove, but ``sys.audit`` is open to anyone: a forged post that
# came first (an empty reason, a None finding) must not hide the real finding that follows, nor break the report.
_FIND_GUARD = ("import inspect\n"
               "def the_guard():\n"
               "    frame = inspect.currentframe()\n"
               "    while frame is not None:\n"
               "        for value in frame.f_locals.values():\n"
               "            if type(value).__name__ == 'OpGuard':\n"
               "                return value\n"
               "        frame = frame.f_back\n")
FORGED_POSTS = {
    "an empty reason to every open guard": "sys.audit('grader.op_guard.post', None, 'tampered', '')",
    "None as the reason": "sys.audit('grader.op_guard.post', None, 'tampered', None)",
    "an empty reason to the guard itself": "sys.audit('grader.op_guard.post', the_guard(), 'tampered', '')",
    "no large tensor": "sys.audit('grader.op_guard.post', None, 'too_big', None)",
    "no wide tensor": "sys.audit('grader.op_guard.post', the_guard(), 'wide', None)",
    "no export": "sys.audit('grader.op_guard.post', None, 'exported', '')",
    "a malformed family": "sys.audit('grader.op_guard.post', None, 'used', 7)",
    "a kind the monitor does not know": "sys.audit('grader.op_guard.post', None, 'opened', (None, None))",
}


@pytest.mark.parametrize("forged", FORGED_POSTS)
def test_does_a_forged_post_to_the_monitors_record_count_as_tampering(forged, tripwires):
    namespace = {"torch": torch, "X": X}
    exec(f"import sys\n{_FIND_GUARD}def sneaky():\n    {FORGED_POSTS[forged]}\n"
         "    big = torch.ones(64, 64)\n    return torch.softmax(X, -1) + big.sum()\n", namespace)
    with OpGuard(max_numel=1000, allow=host_threads()) as guard:
        namespace["sneaky"]()
    report = guard.report()  # must not raise, whatever was posted
    assert isinstance(report["tampered"], str) and report["tampered"], report
    assert report["too_big"] is not None and report["too_big"]["numel"] == 64 * 64, report
    assert report["used"].get(SOFTMAX) == "torch.softmax", report
    # and the verdict: the item's points withheld, with a reason
    assert rules.forbidden_message("softmax_stable", (SOFTMAX,), set(), {}, report["tampered"])
