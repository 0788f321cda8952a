"""Outputs compared strictly: every part of the reference's output must come back with the reference's kind.

The attacks (issue 16): an answer that returns the right *structure* filled with the wrong *kind* of thing
(plain numbers where the reference has tensors, a dict without the reference's keys, a module whose
parameters vanished, one more level of nesting, a bool for an int, ...) must fail its case with a message
that says what was expected, and cost only its item. Correct answers that differ only in a kind a fair
grader accepts (a list where the spec writes ``(context, weights)``, a NumPy integer for a count) pass.

Three levels: the comparison on serialised values (``compare_outputs``), whole items run in process
against the reference (``judge``), and whole notebooks through the sandboxed worker (slow).
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

import solutions
from exercises.catalogue import ITEMS
from exercises.compare import Outputs, compare_outputs
from exercises.judge import Verdict, judge, reference_outputs, run_on
from exercises.program import ProgramError, serialise_outputs

T = torch.arange(6, dtype=torch.float32).reshape(2, 3) / 7  # a tensor output
U = torch.ones(2, 3)


def outputs(**values) -> Outputs:
    """``values`` serialised as the worker would (float32 computation)."""
    return Outputs(*serialise_outputs(values, "float32"))


def problems(reference: dict, student: dict) -> list[str]:
    return [p.message for p in compare_outputs(outputs(**student), outputs(**reference), "cpu")]


# --- the comparison: (reference output, student output, what the message must say) ------------------------

ATTACKS = {
    "numbers_for_a_tuple_of_tensors": ((T, T, T), (0, 0, 0), "tuple of 3 tensors"),
    "floats_for_a_pair_of_tensors": ((T, T), (1.0, 1.0), "tuple of 2 tensors"),
    "list_of_numbers_for_tensors": ((T, T), [0.0, 0.0], "tuple of 2 tensors"),
    "number_for_a_tensor": (T, 0.5, "torch.Tensor"),
    "int_for_a_tensor": (T, 0, "torch.Tensor"),
    "tensor_for_an_int": (7, torch.tensor(7), "Python int"),
    "float_for_an_int": (7, 7.0, "Python int"),
    "bool_for_an_int": (1, True, "Python int"),
    "int_for_a_bool": (True, 1, "Python bool"),
    "numpy_bool_for_an_int": (1, np.True_, "Python int"),
    "false_for_true": (True, np.False_, "should be True"),
    "tensor_for_a_float": (0.25, torch.tensor(0.25), "Python float"),
    "tensors_for_a_list_of_numbers": ([0.5, 0.25], [torch.tensor(0.5), torch.tensor(0.25)], "Python numbers"),
    "one_element_too_many": ((T, T), (T, T, T), "tuple of 2 tensors, got a tuple of length 3"),
    "one_element_too_few": ((T, T, T), (T, T), "tuple of 3 tensors, got a tuple of length 2"),
    "extra_nesting": ((T, T), ((T, T),), "tuple of 2 tensors, got a tuple of length 1"),
    "tensor_for_a_tuple": ((T, T), T, "tuple of 2 tensors"),
    "element_of_the_wrong_kind": ((T, T), (T, 1.0), "`out.1`"),
    "none_for_an_element": ((T, T), (T, None), "`out.1`"),
    "none_for_a_tensor": (T, None, "torch.Tensor"),
    "tensor_for_none": (None, T, "None"),
    "missing_dict_key": ({"W_query": T, "W_key": T}, {"W_query": T}, "W_key"),
    "renamed_dict_key": ({"W_query": T}, {"W_q": T}, "W_query"),
    "empty_dict": ({"W_query": T, "W_key": T}, {}, "W_query"),
    "extra_dict_key": ({"W_query": T}, {"W_query": T, "bias": T}, "bias"),
    "dict_for_a_tuple": ((T, T), {"0": T, "1": T}, "tuple of 2 tensors"),
    "reshaped_parameter": ({"W_query": T}, {"W_query": T.T}, "shape"),
    "nan_filled": (T, torch.full_like(T, float("nan")), "NaN"),
    "nan_for_a_float": (0.25, float("nan"), "NaN"),
    "tensor_subclass": (T, T.clone().as_subclass(type("Liar", (torch.Tensor,), {})), "subclass"),
    "parameter_subclass": (T, type("Liar", (torch.nn.Parameter,), {})(T.clone()), "subclass"),
    "string_for_a_tensor": (T, "tensor", "torch.Tensor"),
    "wrong_dtype": (T, T.double(), "dtype"),
    "wrong_string": ("ValueError", "", "ValueError"),
}


@pytest.mark.parametrize("reference, student, said", ATTACKS.values(), ids=ATTACKS.keys())
def test_is_a_wrong_kind_of_output_refused_with_what_was_expected(reference, student, said):
    found = problems({"out": reference}, {"out": student})
    assert found, "the wrong kind of output was accepted"
    assert any(said in message for message in found), found


def test_is_an_output_on_the_wrong_device_refused():
    student = outputs(out=T)
    student.meta["out"]["device"] = "meta"  # as a tensor made on another device reports itself
    found = compare_outputs(student, outputs(out=T), "cpu")
    assert [p.kind for p in found] == ["device"]


def test_is_a_tensor_without_data_refused_for_its_device():
    """A ``meta`` tensor cannot be copied to the CPU: the serialiser says so instead of raising (NotImplementedError
    from the copy read as "your cell still raises NotImplementedError")."""
    found = problems({"out": T}, {"out": T.to("meta")})
    assert len(found) == 1 and "is on meta" in found[0], found


def test_is_a_sparse_tensor_refused_with_the_reason():
    found = problems({"out": T}, {"out": T.to_sparse()})
    assert len(found) == 1 and "could not be read back" in found[0] and "dense" in found[0], found


def test_is_a_missing_output_refused():
    assert problems({"out": T, "extra": T}, {"out": T}) == ["`extra` was not returned"]


ACCEPTED = {
    "same_kinds": ((T, U), (T.clone(), U.clone())),
    "list_where_the_spec_writes_a_tuple": ((T, U), [T.clone(), U.clone()]),
    "tuple_where_the_reference_has_a_list": ([0.5, 0.25], (0.5, 0.25)),
    "numpy_integer_for_an_int": (2360064, np.int64(2360064)),
    "numpy_int32_for_an_int": (8, np.int32(8)),
    "int_for_a_float": (3.0, 3),
    "numpy_float_for_a_float": (0.25, np.float32(0.25)),
    "numpy_floats_in_a_list_of_numbers": ([0.5, 0.25], [np.float32(0.5), np.float64(0.25)]),
    "dict_in_another_order": ({"a": T, "b": U}, {"b": U.clone(), "a": T.clone()}),
    "none_for_none": (None, None),
    "numpy_bool_for_a_bool": (True, np.True_),
    "namedtuple_for_a_tuple": ((T, U), collections.namedtuple("Attention", "context weights")(T.clone(), U.clone())),
    "ordered_dict_for_a_dict": ({"a": T}, collections.OrderedDict(a=T.clone())),
    "parameter_for_a_tensor": (T, torch.nn.Parameter(T.clone())),
}


@pytest.mark.parametrize("reference, student", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_is_a_fair_kind_of_output_accepted(reference, student):
    assert problems({"out": reference}, {"out": student}) == []


def test_does_a_forged_student_record_fail_without_crashing_the_grader():
    """The student's metadata comes from the student's process: malformed entries are wrong answers."""
    reference = outputs(out=(T, T), n=7, d={"a": T}, losses=[0.5, 0.25])
    forged = outputs(out=(T, T), n=7, d={"a": T}, losses=[0.5, 0.25])
    forged.meta["out"] = "tuple"
    forged.meta["n"] = {"pytype": "int"}
    forged.tensors["n"] = torch.ones(3, 3)
    forged.meta["d"] = {"pytype": "dict", "keys": 5}
    forged.tensors["losses"] = torch.ones(7)
    found = {p.key for p in compare_outputs(forged, reference, "cpu")}
    assert {"out", "n", "d", "losses"} <= found


# --- whole items in process, against the reference ----------------------------------------------------


def grade_in_process(item: str, source: str, seeds=(0,)) -> list[Verdict]:
    """Every case of ``item`` (cpu, every dtype variant) with ``source`` as its answer cell."""
    namespace = dict(vars(solutions))
    exec(compile(source, f"<{item}>", "exec"), namespace)
    verdicts = []
    for seed in seeds:
        for dtype in ITEMS[item].variants("cpu"):
            for case in ITEMS[item].cases(seed, dtype):
                reference = reference_outputs(case, "cpu", dtype)
                torch.manual_seed(0)
                try:
                    student = run_on(namespace, case, "cpu", dtype)
                except (ProgramError, Exception) as exc:  # noqa: BLE001 - the worker reports it as the case's error
                    verdicts.append(Verdict(False, f"{type(exc).__name__}: {exc}"))
                    continue
                verdicts.append(judge(case, student, reference, "cpu"))
    return verdicts


ITEM_ATTACKS = {
    "project_qkv_zeros": ("project_qkv", "def project_qkv(x, W_q, W_k, W_v):\n    return (0, 0, 0)\n",
                          "tuple of 3 tensors"),
    "project_qkv_pair": ("project_qkv", "def project_qkv(x, W_q, W_k, W_v):\n    return (x @ W_q, x @ W_k)\n",
                         "tuple of 3 tensors"),
    "simple_self_attention_ones": ("simple_self_attention", "def simple_self_attention(inputs):\n"
                                   "    return (1.0, 1.0)\n", "tuple of 2 tensors"),
    "simple_self_attention_nested": ("simple_self_attention", "def simple_self_attention(inputs):\n"
                                     "    w = (inputs @ inputs.mT).softmax(-1)\n    return ((w @ inputs, w),)\n",
                                     "tuple of 2 tensors"),
    "flash_forward_numbers": ("flash_attention_forward",
                              "def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64):\n"
                              "    return (0.0, 0.0)\n", "tuple of 2 tensors"),
    "flash_backward_number_list": ("flash_attention_backward",
                                   "def flash_attention_backward(q, k, v, out, lse, grad_out, causal=False, "
                                   "block_q=64, block_k=64):\n    return [0.0, 0.0, 0.0]\n", "tuple of 3 tensors"),
    "transfer_deletes_parameters": ("transfer_weights",
                                    "def transfer_weights(sa_v2, sa_v1):\n"
                                    "    for name in ('W_query', 'W_key', 'W_value'):\n"
                                    "        delattr(sa_v1, name)\n"
                                    "    sa_v1.forward = sa_v2.forward\n", "W_query"),
    "transfer_renames_parameters": ("transfer_weights",
                                    "import torch\n"
                                    "def transfer_weights(sa_v2, sa_v1):\n"
                                    "    for name in ('W_query', 'W_key', 'W_value'):\n"
                                    "        delattr(sa_v1, name)\n"
                                    "        setattr(sa_v1, name + '_t', torch.nn.Parameter(getattr(sa_v2, name)"
                                    ".weight.detach().T.clone()))\n"
                                    "    sa_v1.forward = sa_v2.forward\n", "W_query"),
    "transfer_reshapes_parameters": ("transfer_weights",
                                     "import torch\n"
                                     "def transfer_weights(sa_v2, sa_v1):\n"
                                     "    for name in ('W_query', 'W_key', 'W_value'):\n"
                                     "        setattr(sa_v1, name, torch.nn.Parameter(getattr(sa_v2, name)"
                                     ".weight.detach().reshape(-1).clone()))\n"
                                     "    sa_v1.forward = sa_v2.forward\n", "shape"),
    "count_parameters_tensor": ("count_parameters", "import torch\ndef count_parameters(module):\n"
                                "    return torch.tensor(sum(p.numel() for p in module.parameters() "
                                "if p.requires_grad))\n", "Python int"),
    "count_parameters_float": ("count_parameters", "def count_parameters(module):\n"
                               "    return float(sum(p.numel() for p in module.parameters() if p.requires_grad))\n",
                               "Python int"),
    "count_parameters_bool": ("count_parameters", "def count_parameters(module):\n    return True\n", "Python int"),
}


@pytest.mark.parametrize("item, source, said", ITEM_ATTACKS.values(), ids=ITEM_ATTACKS.keys())
def test_does_an_attack_earn_nothing(item, source, said):
    verdicts = grade_in_process(item, source)
    passed = [v for v in verdicts if v.passed]
    assert not passed, f"{len(passed)} of {len(verdicts)} cases passed"
    assert any(said in v.message for v in verdicts), [v.message for v in verdicts][:3]


FAIR = {
    "count_parameters_numpy": ("count_parameters", "import numpy as np\ndef count_parameters(module):\n"
                               "    return np.sum([p.numel() for p in module.parameters() if p.requires_grad], "
                               "dtype=np.int64)\n"),
    "simple_self_attention_list": ("simple_self_attention", "def simple_self_attention(inputs):\n"
                                   "    w = (inputs @ inputs.transpose(-2, -1)).softmax(-1)\n"
                                   "    return [w @ inputs, w]\n"),
    "project_qkv_list": ("project_qkv", "def project_qkv(x, W_q, W_k, W_v):\n    return [x @ W_q, x @ W_k, x @ W_v]\n"),
}


@pytest.mark.parametrize("item, source", FAIR.values(), ids=FAIR.keys())
def test_does_a_fair_answer_get_every_case(item, source):
    failed = [v.message for v in grade_in_process(item, source) if not v.passed]
    assert not failed, failed[:3]


# --- whole notebooks through the sandboxed worker ---------------------------------------------------------

NOTEBOOK_ATTACKS = {
    # notebook: (answer cells replaced, {item: expected status}, {item: what its message must say}); every other
    # item keeps full marks, the fair answers among the replaced ones included
    "01_attention_scores.ipynb": ({
        "simple_self_attention": ITEM_ATTACKS["simple_self_attention_ones"][1],
        "softmax_naive": "def softmax_naive(x, dim=-1):\n    e = x.exp()\n    return (e / e.sum(dim, keepdim=True),)\n",
        "context_vectors": "def context_vectors(weights, inputs):\n    return (weights @ inputs).to('meta')\n",
        "attention_scores": "import torch\ndef attention_scores(inputs):\n"
                            "    return torch.nn.Parameter(inputs @ inputs.mT, requires_grad=False)\n",
    }, {"simple_self_attention": "failed", "softmax_naive": "failed", "context_vectors": "failed"},
        {"simple_self_attention": "tuple of 2 tensors", "softmax_naive": "should be a torch.Tensor, got a tuple",
         "context_vectors": "meta"}),
    "02_scaled_dot_product_attention.ipynb": ({
        "project_qkv": ITEM_ATTACKS["project_qkv_zeros"][1],
        "scaled_dot_product_attention": "def scaled_dot_product_attention(q, k, v, mask=None):\n"
                                        "    s = q @ k.mT / k.shape[-1] ** 0.5\n"
                                        "    if mask is not None:\n        s = s.masked_fill(~mask, float('-inf'))\n"
                                        "    w = (s - s.amax(-1, keepdim=True)).exp()\n"
                                        "    w = w / w.sum(-1, keepdim=True)\n    return [w @ v, w]\n",
    }, {"project_qkv": "failed"}, {"project_qkv": "tuple of 3 tensors"}),
    "03_trainable_self_attention.ipynb": (
        {"transfer_weights": ITEM_ATTACKS["transfer_deletes_parameters"][1]},
        {"transfer_weights": "failed"}, {"transfer_weights": "missing ['W_key', 'W_query', 'W_value']"}),
    "05_multi_head_attention.ipynb": ({
        "count_parameters": FAIR["count_parameters_numpy"][1],
        "split_heads": "def split_heads(x, num_heads):\n    b, n, d = x.shape\n"
                       "    return x.reshape(b, n, num_heads, d // num_heads).transpose(1, 2).numpy()\n",
    }, {"split_heads": "failed"}, {"split_heads": "should be a torch.Tensor, got a ndarray"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOK_ATTACKS, ids=lambda nb: nb[:2])
def test_does_a_wrong_kind_cost_only_its_item_in_the_sandboxed_worker(tmp_path, notebook):
    from grader_fixtures import write_submission

    from autograder.grading import grade_notebook
    from autograder.runner import default_bwrap
    from autograder.sandbox import Limits

    overrides, broken, said = NOTEBOOK_ATTACKS[notebook]
    path = write_submission(tmp_path / "student", notebook, overrides)
    limits = Limits(call_timeout=20.0, cell_timeout=30.0, startup_timeout=60.0, memory_bytes=3 << 30)
    result = grade_notebook(notebook, path, seed=7, devices=["cpu"], limits=limits, use_bwrap=default_bwrap())
    rows = [row for row in result.outcomes if row.device == "cpu"]  # cuda rows are skipped without a GPU
    assert rows
    for row in rows:
        if row.item in broken:
            assert row.status == broken[row.item] and row.score == 0, f"{row.name}: {row.status} {row.message}"
            assert said[row.item] in row.message, row.message
        else:
            assert row.status == "passed" and row.score == row.max_score, f"{row.name}: {row.message}"


def test_does_rebinding_torch_parameter_not_make_a_subclass_plain(monkeypatch):
    """The serialiser's notion of a plain tensor is fixed when it is loaded, before student code runs."""
    liar = type("Liar", (torch.Tensor,), {"__eq__": lambda self, other: True})
    monkeypatch.setattr(torch.nn, "Parameter", liar)
    found = problems({"out": T}, {"out": T.clone().as_subclass(liar)})
    assert found and "subclass" in found[0]


# --- nbgrader's hidden tests: the in-kernel check judges the same way -----------------------------------------


def test_does_the_kernel_check_refuse_numbers_for_tensors_and_credit_a_numpy_count():
    from exercises import kernel

    attacked = dict(vars(solutions))
    exec(ITEM_ATTACKS["project_qkv_zeros"][1], attacked)
    with pytest.raises(AssertionError, match="tuple of 3 tensors"):
        kernel.check("project_qkv", attacked, seed=3)
    fair = dict(vars(solutions))
    exec(FAIR["count_parameters_numpy"][1], fair)
    assert kernel.check("count_parameters", fair, seed=3) is None
