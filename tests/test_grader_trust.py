"""Is a grade the grader's to give? Grader faults stop the run; numbers are judged in their own dtype.

The grader must never blame a student for its own failure: a worker that cannot start, a directory
its user cannot reach, outputs it cannot hand back. And a perfect answer must pass on every seed:
Python numbers computed in float32 travel as float64 and are judged with float32's tolerance.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autograder import report, runner, sandbox
from autograder.canary import check_grader, reference_cells
from autograder.grading import NotebookResult, TestOutcome
from autograder.pool import ColdWorker
from autograder.runner import CallSpec, CellSpec, GraderError, run_plan
from autograder.sandbox import Limits
from exercises.compare import Outputs, compare_outputs, number_dtype, value_mismatch
from exercises.program import compute_dtype, serialise_outputs

REPO = Path(__file__).resolve().parent.parent
FAST = Limits(call_timeout=20.0, cell_timeout=20.0, startup_timeout=60.0, memory_bytes=3 << 30)
CLONE = [{"op": "call", "fn": "torch.clone", "args": [{"tensor": "x"}], "out": "y"},
         {"op": "output", "key": "out", "var": "y"}]


def outputs(values: dict, computed_in: str = "float64") -> Outputs:
    return Outputs(*serialise_outputs(values, computed_in))


# --- numbers carried in another dtype than they were computed in -----------------------------------


def test_which_dtype_does_a_call_compute_in():
    x32, x64 = torch.zeros(2, dtype=torch.float32), torch.zeros(2, dtype=torch.float64)
    assert compute_dtype("bfloat16", {"x": x64}) == "bfloat16"  # the variant decides
    assert compute_dtype(None, {"a": x64, "b": x32, "i": torch.arange(3)}) == "float32"  # least precise float
    assert compute_dtype(None, {"i": torch.arange(3)}) == "float64"  # Python arithmetic
    assert compute_dtype(None, {}) == "float64"


def test_are_float32_losses_judged_with_float32_tolerance():
    """The seed-854456190 failure: 1.72529 vs 1.72529, a float32 rounding apart, judged as float64."""
    ref = 1.7252912521362305
    close = ref * (1 + 3e-7)  # a few float32 ulps: another summation order in another process
    reference = outputs({"losses": [ref, 0.5]}, computed_in="float32")
    assert reference.meta["losses"]["computed_in"] == "float32"
    assert compare_outputs(outputs({"losses": [close, 0.5]}), reference, "cpu") == []
    # the same numbers computed in float64 must match to float64's tolerance: the check can fail
    strict = outputs({"losses": [ref, 0.5]}, computed_in="float64")
    assert compare_outputs(outputs({"losses": [close, 0.5]}), strict, "cpu")
    # and a wrong loss fails in float32 too
    wrong = compare_outputs(outputs({"losses": [ref * 1.01, 0.5]}), reference, "cpu")
    assert wrong and "float32 computation" in wrong[0].message


def test_is_a_python_float_judged_in_the_dtype_of_its_computation():
    reference = outputs({"out": 2.0}, computed_in="float32")
    assert compare_outputs(outputs({"out": 2.0 * (1 + 2e-7)}), reference, "cpu") == []
    assert compare_outputs(outputs({"out": 2.0 * (1 + 2e-7)}), outputs({"out": 2.0}), "cpu")


def test_can_a_student_loosen_the_tolerance_by_claiming_a_coarser_dtype():
    """Only the reference's metadata (computed in the grader's process) sets the tolerance."""
    reference = outputs({"out": [1.0, 2.0]}, computed_in="float64")
    forged = outputs({"out": [1.0 + 1e-3, 2.0]}, computed_in="bfloat16")
    assert compare_outputs(forged, reference, "cpu")
    assert number_dtype({"computed_in": "bfloat16"}) == torch.bfloat16
    assert number_dtype({"computed_in": "int64"}) == torch.float64  # not a floating dtype: ignored
    assert number_dtype({"computed_in": "__class__"}) == torch.float64
    assert number_dtype({}) == torch.float64


def test_does_value_mismatch_say_which_tolerance_it_used():
    a, b = torch.tensor([1.0], dtype=torch.float64), torch.tensor([1.001], dtype=torch.float64)
    found = value_mismatch("loss", a, b, computed_in=torch.float32)
    assert found is not None and "float32 computation" in found.message
    one = torch.tensor([1.0], dtype=torch.float64)
    assert value_mismatch("loss", one + 1e-7, one, computed_in=torch.float32) is None


# --- the worker's directory, for whatever user the worker runs as -----------------------------------


def test_is_the_grading_root_reachable_by_another_user():
    root = sandbox.make_grading_root(for_other_user=True)
    try:
        mode = root.stat().st_mode
        assert mode & stat.S_IXOTH and not mode & stat.S_IROTH  # others pass through, cannot list
        assert all(p.stat().st_mode & stat.S_IXOTH for p in root.parents)
    finally:
        root.rmdir()


def test_does_a_private_tmpdir_fall_back_to_a_shared_one(tmp_path, monkeypatch):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    monkeypatch.setenv("TMPDIR", str(private))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    own = sandbox.make_grading_root(for_other_user=False)
    shared = sandbox.make_grading_root(for_other_user=True)
    try:
        assert own.parent == private  # the worker runs as us: our TMPDIR is fine
        assert shared.parent != private and str(shared.parent) in sandbox.SHARED_TEMP_DIRS
    finally:
        own.rmdir()
        shared.rmdir()


def test_does_the_drop_need_the_site_packages_reachable(monkeypatch, tmp_path):
    if os.geteuid() != 0:
        assert not sandbox.can_drop_privileges(None)
        return
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    paths = {"stdlib": "/usr/lib/python3.11", "purelib": str(closed / "site-packages"),
             "platlib": str(closed / "site-packages")}
    monkeypatch.setattr(sandbox.sysconfig, "get_paths", lambda: paths)
    monkeypatch.setattr(sandbox.sys, "executable", "/usr/bin/python3")
    assert not sandbox.can_drop_privileges(None)  # torch would not import as nobody
    assert sandbox.can_drop_privileges("/usr/bin/bwrap")  # bubblewrap re-mounts the tree


# --- grader faults are the grader's -----------------------------------------------------------------


@pytest.mark.slow
def test_is_a_worker_that_cannot_start_a_grader_error():
    tiny = Limits(call_timeout=5, cell_timeout=5, startup_timeout=60, memory_bytes=200 << 20)
    probe = CallSpec(0, CLONE, {"x": torch.ones(3)}, "cpu", None)
    with pytest.raises(GraderError, match="before running any student code") as info:
        run_plan([], [probe], tiny, use_bwrap=None)
    assert "200 MiB" in str(info.value) and "Traceback" in str(info.value)  # the cause and the worker's words


@pytest.mark.slow
def test_is_a_student_who_breaks_the_output_files_charged_not_the_grader():
    """After student code ran, a failure to hand back outputs is checked against a worker without it."""
    sabotage = ("import sys\n"
                "def _refuse(*args, **kwargs):\n    raise OSError('disk says no')\n"
                "sys.modules['__main__'].save_file = _refuse\n")
    probe = CallSpec(0, CLONE, {"x": torch.arange(4.0)}, "cpu", None)
    run = run_plan([CellSpec("answer", sabotage, "answer")], [probe], FAST, use_bwrap=None)
    result = run.calls[0]
    assert result.status == "harness" and result.outputs is None
    assert "after your code ran" in result.error["message"] and "disk says no" in result.error["message"]


@pytest.mark.slow
def test_is_an_output_path_broken_for_everyone_a_grader_error(monkeypatch):
    monkeypatch.setattr(runner, "_read_outputs", lambda wdir, call_id, limits: None)
    probe = CallSpec(0, CLONE, {"x": torch.arange(4.0)}, "cpu", None)
    with pytest.raises(GraderError, match="even without student code"):
        run_plan([], [probe], FAST, use_bwrap=None)


# --- the canary ---------------------------------------------------------------------------------------


def test_are_the_reference_cells_free_of_package_imports():
    cells = reference_cells()
    assert len(cells) == len(list((REPO / "solutions").glob("lesson*.py")))  # one per lesson module
    assert not any("from ." in cell.source for cell in cells)


@pytest.mark.slow
def test_does_the_canary_pass_here():
    result = check_grader(["cpu"], FAST, runner.default_bwrap())
    assert len(result.outcomes) >= 23 and not result.failed
    assert result.seconds < 30


@pytest.mark.slow
def test_does_the_canary_stop_a_grader_that_compares_devices_as_strings(monkeypatch):
    """The cuda bug (``cuda:0`` != ``cuda``), replayed on the CPU: every tensor row fails, so nobody is graded."""
    import exercises.compare

    monkeypatch.setattr(exercises.compare, "same_device", lambda actual, expected: actual == f"{expected}:0")
    with pytest.raises(GraderError, match="self-check failed") as info:
        check_grader(["cpu"], FAST, None)
    assert "is on cpu, expected cpu" in str(info.value) and "isolation: rlimits" in str(info.value)


@pytest.mark.slow
def test_does_the_canary_stop_a_grader_whose_operation_monitor_sees_nothing(monkeypatch, tmp_path):
    """A worker whose monitor is blind would let every shortcut through: the canary's probe must notice."""
    blind = tmp_path / "op_guard.py"
    blind.write_text("class OpGuard:\n    def __init__(self, max_numel=None, span=None):\n        pass\n"
                     "    def __enter__(self):\n        return self\n    def __exit__(self, *exc):\n        pass\n"
                     "    def report(self):\n        return {'used': {}, 'too_big': None, 'tampered': None}\n"
                     "def install_tripwires(trusted=(), strict=False):\n    return None\n"
                     "def stand_ins(*functions):\n    return None\n")
    monkeypatch.setitem(sandbox.WORKER_FILES, "op_guard.py", blind)
    with pytest.raises(GraderError, match="self-check failed") as info:
        check_grader(["cpu"], FAST, None)
    assert "the operation monitor does not work in the worker: a softmax reached through getattr" in str(info.value)


# --- reports: nobody gets a zero for the grader's fault ------------------------------------------------


def _submission(path: str, errors: dict[str, str]) -> report.SubmissionReport:
    sub = report.SubmissionReport(path, 1, ["cpu"], "rlimits")
    row = TestOutcome("softmax_naive", "01_attention_scores.ipynb", "cpu", "float64", "passed", 1.0, 1.0)
    sub.add(NotebookResult("01_attention_scores.ipynb", [row], [], "rlimits", 0.1))
    sub.grader_errors.update(errors)
    return sub


def test_are_submissions_the_grader_failed_on_left_out_of_every_score_file(tmp_path):
    ok, failed = _submission("/x/ada", {}), _submission("/x/bob", {"02.ipynb": "worker did not start"})
    report.write_json([ok, failed], tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert [s["path"] for s in data["submissions"]] == ["/x/ada"]
    assert data["not_graded"] == [{"path": "/x/bob", "errors": {"02.ipynb": "worker did not start"}}]
    report.write_csv([ok, failed], tmp_path / "g.csv")
    assert "bob" not in (tmp_path / "g.csv").read_text() and "ada" in (tmp_path / "g.csv").read_text()
    report.write_gradescope([failed], tmp_path / "results.json")
    assert not (tmp_path / "results.json").exists()
    assert "NOT GRADED" in report.table(failed) and "not graded" in report.summary([ok, failed])


@pytest.mark.slow
def test_does_the_cli_exit_2_and_grade_nobody_when_the_worker_cannot_start(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", str(REPO / "examples/submissions/perfect"),
                           "--memory-mib", "200", "--json", str(out), "-q"], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "could not grade" in proc.stdout + proc.stderr
    assert "200 MiB" in proc.stdout
    assert not out.exists()  # no report with zeros in it


def test_does_a_cpu_only_run_on_a_gpu_machine_say_why_cuda_was_not_graded():
    from autograder.grading import gpu_not_exercised

    assert "--device" in gpu_not_exercised(cuda_present=True)
    assert "no CUDA device" in gpu_not_exercised(cuda_present=False)


@pytest.mark.slow
def test_does_a_forged_finished_event_cost_only_the_call_in_flight():
    """Without the privilege drop the student can write the progress file; a lie costs only their own step."""
    forger = ("import json, time\n"
              "def forge(x):\n"
              "    with open('progress.jsonl', 'a') as fh:\n"
              "        fh.write(json.dumps({'event': 'finished'}) + '\\n')\n"
              "    time.sleep(1)\n"
              "    return x\n")
    forged = CallSpec(0, [{"op": "call", "fn": "forge", "args": [{"tensor": "x"}], "out": "y"},
                          {"op": "output", "key": "out", "var": "y"}], {"x": torch.ones(2)}, "cpu", None, group="a")
    honest = CallSpec(1, CLONE, {"x": torch.arange(3.0)}, "cpu", None, group="b")
    run = run_plan([CellSpec("answer", forger, "answer")], [forged, honest], FAST, use_bwrap=None)
    assert run.calls[0].status in ("crashed", "exception")  # exception: as nobody it may not write the file
    assert run.calls[1].status == "ok" and torch.equal(run.calls[1].outputs.tensors["out"], torch.arange(3.0))


def test_is_a_missing_source_folder_named_rather_than_graded_as_zero(tmp_path, monkeypatch):
    from exercises import source as intake  # where the course's source/ is found
    from exercises.catalogue import NOTEBOOKS

    with pytest.raises(FileNotFoundError, match="--source"):
        intake.find_source_dir(tmp_path / "nowhere", NOTEBOOKS)
    assert intake.find_source_dir(REPO / "source", NOTEBOOKS) == (REPO / "source").resolve()
    # installed from a wheel there is no source/ beside the package: the course root is the working directory
    monkeypatch.setattr(intake, "SOURCE_DIR", tmp_path / "site-packages" / "source")
    monkeypatch.chdir(REPO)
    assert intake.find_source_dir(None, NOTEBOOKS) == (REPO / "source").resolve()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="course root"):
        intake.find_source_dir(None, NOTEBOOKS)


def test_is_a_full_row_worth_exactly_its_maximum_when_the_share_is_a_sixth():
    """On a GPU an item's point is split over 2 devices and 3 variants: round(1/6, 6) must not exceed 1/6."""
    from autograder.grading import ReferenceCache, _judge_variant
    from autograder.intake import PreparedNotebook
    from autograder.runner import CallResult
    from exercises.catalogue import ITEMS
    from exercises.judge import reference_outputs

    item = ITEMS["softmax_naive"]
    share = item.share(1.0, "cuda", ["cpu", "cuda"])
    rows = [(i, case, CallResult("ok", reference_outputs(case, "cpu", "float32")))
            for i, case in enumerate(item.cases(0, "float32"))]
    row = _judge_variant(item, "01_attention_scores.ipynb", "cpu", "float32", rows, share, PreparedNotebook([]),
                         ReferenceCache())
    assert row.status == "passed" and row.score == row.max_score == share
    assert sum([row.score] * 6) <= 1.0


def test_does_a_batch_get_one_gradescope_file_per_student(tmp_path):
    ada, bob = _submission("/x/ada", {}), _submission("/x/bob", {})
    report.write_gradescope([ada, bob], tmp_path / "results.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results-ada.json", "results-bob.json"]
    report.write_gradescope([ada], tmp_path / "one" / "results.json")
    assert json.loads((tmp_path / "one" / "results.json").read_text())["score"] == ada.score


@pytest.mark.slow
def test_is_a_hidden_builtin_softmax_caught_at_run_time_in_the_worker(tmp_path):
    """The static check cannot see ``getattr(torch, "soft" + "max")``; the worker's recorders must."""
    from grader_fixtures import NB1, write_submission

    from autograder.grading import grade_notebook

    hidden = "import torch\ndef softmax_stable(x, dim=-1):\n    return getattr(torch, 'soft' + 'max')(x, dim=dim)\n"
    path = write_submission(tmp_path / "student", NB1, {"softmax_stable": hidden})
    result = grade_notebook(NB1, path, 3, ["cpu"], FAST, runner.default_bwrap())
    rows = [r for r in result.outcomes if r.item == "softmax_stable" and r.device == "cpu"]
    assert rows and all(r.score == 0 and r.forbidden and "may not use the built-in softmax (reached through "
                        "torch.softmax)" in r.message and "detected while running" in r.message for r in rows)
    assert all(r.status == "passed" for r in result.outcomes if r.item == "softmax_naive" and r.device == "cpu")


# --- the worker protocol, read without a worker --------------------------------------------------------


def _watch(tmp_path, events: list, n_cells: int = 1, guarded: set[int] | None = None):
    from autograder.worker import protocol

    (tmp_path / protocol.PROGRESS).write_text("".join(e if isinstance(e, str) else json.dumps(e) + "\n"
                                                      for e in events))
    process = subprocess.Popen(["true"])
    process.wait()
    worker = ColdWorker.__new__(ColdWorker)  # a worker that has already ended: only its process is read
    worker.launched, worker.tag = sandbox.Launched(process, "no-such-tag", "rlimits"), "no-such-tag"
    progress = runner.Progress(os.open(tmp_path / protocol.PROGRESS, os.O_RDONLY))
    try:
        return runner._monitor(None, progress, worker, FAST, n_cells, False, guarded=guarded)
    finally:
        progress.close()


def test_does_the_monitor_turn_a_workers_events_into_records(tmp_path):
    watch = _watch(tmp_path, [{"event": "ready"}, {"event": "cell_start", "index": 0},
                              {"event": "cell_done", "index": 0, "defined": ["f"]}, "not json\n",
                              {"event": "call_start", "id": 3},
                              {"event": "call_done", "id": 3, "status": "ok", "guard": {
                                  "used": {"softmax": "torch.softmax"}, "too_big": None, "tampered": None}},
                              {"event": "call_start", "id": 4},
                              {"event": "call_done", "id": 4, "status": "ok", "guard": {"used": ["softmax"]}},
                              {"event": "finished"}])
    assert watch.finished and watch.ready and watch.step is None
    assert watch.cells[0].status == "ok" and watch.cells[0].defined == ["f"]
    assert watch.calls[3].status == "ok" and watch.calls[3].used == ["softmax"]
    assert watch.calls[3].guard == {"used": {"softmax": "torch.softmax"}, "too_big": None, "wide": None,
                                    "exported": None, "tampered": None}
    assert watch.calls[4].guard is None  # a report in another shape is no report


def test_does_the_monitor_charge_the_step_in_flight_when_the_worker_dies(tmp_path):
    watch = _watch(tmp_path, [{"event": "ready"}, {"event": "call_start", "id": 5},
                              {"event": "call_done", "id": 4, "status": "ok"}])  # not the call in flight: ignored
    assert not watch.finished and watch.step == ("call", 5, "crashed") and watch.calls == {}


def test_is_a_worker_that_died_before_ready_reported_as_not_ready(tmp_path):
    watch = _watch(tmp_path, [])
    assert not watch.ready and watch.step is None and not watch.finished
