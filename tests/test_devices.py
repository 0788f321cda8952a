"""The grader's cuda-specific logic, tested on any machine; plus a few checks that need a real GPU.

On CPU: device names compared as devices (``same_device``), the device check of the comparison with
hand-made ``Outputs`` whose metadata says ``cuda:0`` (what a tensor on the GPU reports), the dtype
variants per device (bfloat16 on cuda only), how an item's points are split over devices and
variants, and which devices are graded (``available_devices`` with ``torch.cuda.is_available``
patched). On a GPU (``needs_cuda``): the reference run on cuda and judged for cuda passes.
"""

from __future__ import annotations

import pytest
import torch

from autograder.grading import GPU_NOT_ASKED, GPU_NOT_EXERCISED, grade_notebook
from autograder.sandbox import Limits
from exercises import catalogue
from exercises.catalogue import FLOAT_DTYPES, ITEMS, NOTEBOOKS, available_devices, items_in
from exercises.compare import Outputs, compare_outputs, same_device, tensor_mismatch
from exercises.program import serialise_outputs

# float64 and float32, plus bfloat16 on a GPU (train_language_model is graded in float64 and float32 but has
# no bfloat16 variant: Adam's curve in bfloat16 is too coarse to judge)
FLOAT_ITEMS = [name for name, item in ITEMS.items() if tuple(item.dtypes) == FLOAT_DTYPES and item.gpu_dtypes]
OTHER_ITEMS = [name for name in ITEMS if name not in FLOAT_ITEMS]
needs_cuda = pytest.mark.needs_cuda  # skipped with "GPU not exercised" without a GPU (conftest.py)


def outputs(device: str | None = None, **values) -> Outputs:
    """Serialised outputs as the worker writes them; ``device`` rewrites every tensor's recorded device."""
    tensors, meta = serialise_outputs(values)
    if device is not None:
        for entry in meta.values():
            if entry.get("pytype") == "Tensor":
                entry["device"] = device
    return Outputs(tensors, meta)


# --- same_device -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("actual", "expected"), [
    ("cuda:0", "cuda"),  # what a tensor on the GPU reports, against the device type the grader asks for
    ("cuda", "cuda"),
    ("cuda:1", "cuda"),  # any index is that device type
    ("cuda:0", "cuda:0"),
    ("cpu", "cpu"),
    ("meta", "meta"),
])
def test_are_the_same_devices_the_same(actual, expected):
    assert same_device(actual, expected)


@pytest.mark.parametrize(("actual", "expected"), [
    ("cuda:1", "cuda:0"),  # an index asked for must match
    ("cuda:0", "cuda:1"),
    ("cpu", "cuda"),
    ("cuda:0", "cpu"),
    ("cuda", "cpu"),
    ("meta", "cuda"),  # a meta tensor has no values: never on the device asked for
    ("meta", "cpu"),
    ("cpu", "meta"),
    ("None", "cuda"),  # str(None): no device recorded
    ("", "cpu"),
    ("gpu", "cuda"),  # not a device name
    ("cudas:0", "cuda"),
])
def test_are_different_devices_different(actual, expected):
    assert not same_device(actual, expected)


# --- the device check of the comparison --------------------------------------------------------------
def test_is_a_tensor_that_says_cuda_0_on_cuda():
    ref = outputs("cuda:0", out=torch.ones(2, 3, dtype=torch.float64))
    student = outputs("cuda:0", out=torch.ones(2, 3, dtype=torch.float64))
    assert student.meta["out"]["device"] == "cuda:0"
    assert tensor_mismatch("out", student, ref, "cuda") is None
    assert compare_outputs(student, ref, "cuda") == []


def test_are_tensors_nested_in_tuples_and_dicts_on_cuda_0_accepted():
    value = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    ref = outputs("cuda:0", out=(value, {"w": value * 2}))
    student = outputs("cuda:0", out=(value.clone(), {"w": value * 2}))
    assert {"out.0", "out.1.w"} <= set(student.meta)
    assert compare_outputs(student, ref, "cuda") == []


def test_is_a_cpu_tensor_where_cuda_is_expected_a_device_mismatch():
    ref = outputs("cuda:0", out=torch.ones(2, 3, dtype=torch.float64))
    student = outputs("cpu", out=torch.ones(2, 3, dtype=torch.float64))
    found = tensor_mismatch("out", student, ref, "cuda")
    assert found is not None and found.kind == "device"
    assert "`out` is on cpu, expected cuda" in found.message
    assert "register it as a buffer or use `x.device`" in found.message
    (problem,) = compare_outputs(student, ref, "cuda")
    assert problem.kind == "device" and problem.key == "out"


def test_is_another_gpu_than_the_one_asked_for_a_device_mismatch():
    ref = outputs("cuda:0", out=torch.ones(3))
    found = tensor_mismatch("out", outputs("cuda:1", out=torch.ones(3)), ref, "cuda:0")
    assert found is not None and found.kind == "device" and "cuda:1" in found.message


def test_is_a_cuda_tensor_where_cpu_is_expected_a_device_mismatch():
    ref = outputs(out=torch.ones(3))
    found = tensor_mismatch("out", outputs("cuda:0", out=torch.ones(3)), ref, "cpu")
    assert found is not None and found.kind == "device" and "is on cuda:0, expected cpu" in found.message


def test_is_a_missing_device_a_device_mismatch():
    ref = outputs("cuda:0", out=torch.ones(3))
    student = outputs(out=torch.ones(3))
    del student.meta["out"]["device"]
    found = tensor_mismatch("out", student, ref, "cuda")
    assert found is not None and found.kind == "device"


def test_does_the_device_check_come_after_dtype_and_before_values():
    ref = outputs("cuda:0", out=torch.ones(2, 3, dtype=torch.float64))
    wrong_dtype_on_cpu = outputs("cpu", out=torch.ones(2, 3, dtype=torch.float32))
    assert tensor_mismatch("out", wrong_dtype_on_cpu, ref, "cuda").kind == "dtype"
    wrong_values_on_cuda = outputs("cuda:0", out=torch.zeros(2, 3, dtype=torch.float64))
    assert tensor_mismatch("out", wrong_values_on_cuda, ref, "cuda").kind == "values"
    wrong_values_on_cpu = outputs("cpu", out=torch.zeros(2, 3, dtype=torch.float64))
    assert tensor_mismatch("out", wrong_values_on_cpu, ref, "cuda").kind == "device"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.bool, torch.int64])
def test_is_cuda_0_accepted_for_every_dtype_graded_on_a_gpu(dtype):
    value = torch.tensor([[1, 0], [1, 1]]).to(dtype)
    ref = outputs("cuda:0", out=value)
    assert compare_outputs(outputs("cuda:0", out=value.clone()), ref, "cuda") == []
    assert [p.kind for p in compare_outputs(outputs("cpu", out=value.clone()), ref, "cuda")] == ["device"]


def test_are_python_numbers_not_held_to_a_device():
    ref = outputs(n=3, loss=0.5, losses=[1.0, 0.5])
    assert compare_outputs(outputs(n=3, loss=0.5, losses=[1.0, 0.5]), ref, "cuda") == []


# --- dtype variants and points per device -----------------------------------------------------------
def test_are_there_float_items_and_others():
    assert len(FLOAT_ITEMS) >= 15 and {"causal_mask", "train_language_model"} <= set(OTHER_ITEMS)


@pytest.mark.parametrize("name", FLOAT_ITEMS)
def test_is_bfloat16_graded_on_cuda_only(name):
    item = ITEMS[name]
    assert item.variants("cpu") == ("float64", "float32")
    assert item.variants("cuda") == ("float64", "float32", "bfloat16")


@pytest.mark.parametrize("name", OTHER_ITEMS)
def test_do_items_without_float_variants_keep_theirs_on_cuda(name):
    item = ITEMS[name]
    assert item.variants("cuda") == item.variants("cpu") == tuple(item.dtypes)
    assert "bfloat16" not in item.variants("cuda")


def test_is_an_items_share_split_over_devices_then_variants():
    item = ITEMS["softmax_stable"]
    assert item.share(2.0, "cpu", ["cpu"]) == pytest.approx(1.0)  # 2 points, 1 device, 2 variants
    assert item.share(2.0, "cpu", ["cpu", "cuda"]) == pytest.approx(0.5)  # 2 devices, 2 variants on cpu
    assert item.share(2.0, "cuda", ["cpu", "cuda"]) == pytest.approx(1 / 3)  # 2 devices, 3 variants on cuda
    single = ITEMS["causal_mask"]
    assert single.share(1.0, "cpu", ["cpu", "cuda"]) == single.share(1.0, "cuda", ["cpu", "cuda"]) == 0.5


@pytest.mark.parametrize("devices", [["cpu"], ["cpu", "cuda"]])
@pytest.mark.parametrize("name", list(ITEMS))
def test_do_the_shares_add_up_to_the_items_points(name, devices):
    item = ITEMS[name]
    total = sum(item.share(3.0, d, devices) for d in devices for _ in item.variants(d))
    assert total == pytest.approx(3.0)


def test_are_cuda_rows_graded_with_their_share_when_cuda_is_a_device():
    """grade_notebook with ``cuda`` among the devices: no skipped rows; cuda rows carry points (bf16 too).

    A notebook that was not submitted is scored without starting a worker, so this runs on any machine.
    """
    notebook = NOTEBOOKS[0]
    result = grade_notebook(notebook, None, 0, ["cpu", "cuda"], Limits(), None)
    rows = result.outcomes
    assert not [r for r in rows if r.status == "skipped"]
    by_device = {d: [r for r in rows if r.device == d] for d in ("cpu", "cuda")}
    assert {r.variant for r in by_device["cuda"]} == {"float64", "float32", "bfloat16"}
    assert "bfloat16" not in {r.variant for r in by_device["cpu"]}
    for item in items_in(notebook):
        per_device = [sum(r.max_score for r in by_device[d] if r.item == item.name) for d in ("cpu", "cuda")]
        assert per_device[0] == pytest.approx(per_device[1]) and per_device[0] > 0, item.name
    assert all(r.status == "failed" and r.score == 0 for r in rows)


def test_are_cuda_rows_skipped_with_no_points_when_cuda_is_not_a_device():
    """Without a GPU the reason is "no CUDA device"; on a GPU machine graded with cpu only, "--device"."""
    result = grade_notebook(NOTEBOOKS[0], None, 0, ["cpu"], Limits(), None)
    cuda = [r for r in result.outcomes if r.device == "cuda"]
    assert len(cuda) == len(items_in(NOTEBOOKS[0]))
    reason = GPU_NOT_ASKED if torch.cuda.is_available() else GPU_NOT_EXERCISED
    assert all(r.status == "skipped" and r.max_score == 0 and r.message == reason for r in cuda)


@pytest.mark.parametrize("present", [True, False])
def test_do_skipped_cuda_rows_say_why(monkeypatch, present):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: present)
    (row, *_) = [r for r in grade_notebook(NOTEBOOKS[0], None, 0, ["cpu"], Limits(), None).outcomes
                 if r.device == "cuda"]
    assert row.message.startswith("GPU not exercised")
    assert ("--device" in row.message) is present and ("no CUDA device" in row.message) is not present


def test_is_the_total_the_same_with_and_without_a_gpu():
    for notebook in NOTEBOOKS:
        with_gpu = grade_notebook(notebook, None, 0, ["cpu", "cuda"], Limits(), None).outcomes
        without = grade_notebook(notebook, None, 0, ["cpu"], Limits(), None).outcomes
        assert sum(r.max_score for r in with_gpu) == pytest.approx(sum(r.max_score for r in without)), notebook


# --- which devices are graded -----------------------------------------------------------------------
def test_are_cpu_and_cuda_graded_where_cuda_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert available_devices() == ["cpu", "cuda"]
    assert catalogue.available_devices() == ["cpu", "cuda"]


def test_is_only_cpu_graded_where_cuda_is_not_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert available_devices() == ["cpu"]


def test_does_available_devices_say_what_this_machine_has():
    assert available_devices() == (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])


# --- on a real GPU -------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("name", list(ITEMS))
def test_does_the_reference_pass_its_own_cases_on_cuda(name):
    """The reference, run on cuda as a student's code would be, passes every case of every variant there.

    Its outputs report ``cuda:0`` while the grader expects ``cuda``: this is the device check on a GPU.
    """
    import solutions
    from exercises.judge import judge, reference_outputs, run_on

    namespace = dict(vars(solutions))
    failures = []
    for seed in (0, 1):
        for dtype in ITEMS[name].variants("cuda"):
            for case in ITEMS[name].cases(seed, dtype):
                reference = reference_outputs(case, "cuda", dtype)
                torch.manual_seed(0)
                student = run_on(namespace, case, "cuda", dtype)
                verdict = judge(case, student, reference, "cuda")
                if not verdict.passed:
                    failures.append(f"seed {seed} {dtype}: {verdict.message}")
    assert not failures, "\n".join(failures)


@needs_cuda
def test_is_a_real_cuda_tensor_on_cuda():
    student = Outputs(*serialise_outputs({"out": torch.ones(2, device="cuda")}))
    assert student.meta["out"]["device"].startswith("cuda:")
    assert compare_outputs(student, student, "cuda") == []
    assert [p.kind for p in compare_outputs(outputs(out=torch.ones(2)), student, "cuda")] == ["device"]
