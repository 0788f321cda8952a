"""Does the grader survive broken and hostile submissions, charging only the items they break?

Each fixture replaces one or two answer cells of lesson 1 (the perfect answers elsewhere) and grades
the notebook in a real worker. The other items must still earn their points.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from grader_fixtures import NB1, answers_from_source, write_submission

from autograder.grading import grade_notebook
from autograder.runner import default_bwrap
from autograder.sandbox import TAG_VARIABLE, Limits, tagged_pids, tags_started

pytestmark = pytest.mark.slow

LIMITS = Limits(call_timeout=4.0, cell_timeout=6.0, startup_timeout=60.0, memory_bytes=3 << 30)
BWRAP = default_bwrap()
needs_bwrap = pytest.mark.skipif(BWRAP is None, reason="bubblewrap not available: full isolation not exercised")
ITEMS = ["attention_scores_loop", "attention_scores", "softmax_naive", "softmax_stable", "context_vectors",
         "simple_self_attention"]


def grade(tmp_path: Path, overrides: dict[str, str | None], use_bwrap=BWRAP, limits: Limits = LIMITS):
    path = write_submission(tmp_path / "student", NB1, overrides)
    started = time.monotonic()
    result = grade_notebook(NB1, path, seed=7, devices=["cpu"], limits=limits, use_bwrap=use_bwrap)
    result.wall = time.monotonic() - started
    return result


def by_item(result) -> dict[str, list]:
    rows: dict[str, list] = {}
    for row in result.outcomes:
        if row.device == "cpu":
            rows.setdefault(row.item, []).append(row)
    return rows


def assert_only_broken(result, broken: dict[str, str]) -> None:
    """Items in ``broken`` have the given status and no points; every other item has full marks."""
    rows = by_item(result)
    for item in ITEMS:
        for row in rows[item]:
            if item in broken:
                assert row.status == broken[item], \
                    f"{row.name}: expected {broken[item]}, got {row.status}: {row.message}"
                assert row.score == 0, f"{row.name} earned {row.score} points it should not"
            else:
                assert row.status == "passed", f"{row.name} should still pass: {row.message}"
                assert row.score == row.max_score


def test_is_a_syntax_error_charged_only_to_its_cell(tmp_path):
    result = grade(tmp_path, {"softmax_naive": "def softmax_naive(x, dim=-1)\n    return x\n"})
    assert_only_broken(result, {"softmax_naive": "error"})
    assert "SyntaxError" in by_item(result)["softmax_naive"][0].message


def test_is_an_infinite_loop_stopped_and_only_its_item_lost(tmp_path):
    loop = "def attention_scores_loop(inputs):\n    while True:\n        pass\n"
    result = grade(tmp_path, {"attention_scores_loop": loop})
    assert_only_broken(result, {"attention_scores_loop": "timeout"})
    assert "longer than" in by_item(result)["attention_scores_loop"][0].message


def test_is_a_loop_that_ignores_signals_killed(tmp_path):
    code = ("import signal\n"
            "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGHUP):\n"
            "    signal.signal(s, signal.SIG_IGN)\n"
            "def softmax_naive(x, dim=-1):\n    while True:\n        try:\n            pass\n"
            "        except BaseException:\n            pass\n")
    result = grade(tmp_path, {"softmax_naive": code})
    assert_only_broken(result, {"softmax_naive": "timeout"})


def test_is_an_infinite_loop_at_cell_level_skipped(tmp_path):
    result = grade(tmp_path, {"softmax_naive": "while True:\n    pass\n"})
    assert_only_broken(result, {"softmax_naive": "error"})
    assert any("longer than" in note for note in result.notes), result.notes


def test_do_sys_exit_and_os_exit_cost_only_their_items(tmp_path):
    result = grade(tmp_path, {
        "softmax_naive": "import sys\ndef softmax_naive(x, dim=-1):\n    sys.exit(3)\n",
        "attention_scores_loop": "import os\ndef attention_scores_loop(inputs):\n    os._exit(0)\n",
        "context_vectors": "import sys\nsys.exit(0)\n",
    })
    assert_only_broken(result, {"softmax_naive": "error", "attention_scores_loop": "error",
                                "context_vectors": "error"})
    assert "sys.exit" in by_item(result)["softmax_naive"][0].message
    assert "died" in by_item(result)["attention_scores_loop"][0].message
    # simple_self_attention calls the missing context_vectors: re-graded with a stand-in, it earns its points
    assert "correct once `context_vectors` is fixed" in by_item(result)["simple_self_attention"][0].message


def test_does_patching_the_comparison_functions_earn_nothing(tmp_path):
    code = ("import torch\n"
            "torch.allclose = lambda *a, **k: True\n"
            "torch.testing.assert_close = lambda *a, **k: None\n"
            "torch.equal = lambda *a, **k: True\n"
            "def softmax_naive(x, dim=-1):\n    return x * 0\n")
    result = grade(tmp_path, {"softmax_naive": code})
    assert_only_broken(result, {"softmax_naive": "failed"})


def test_is_a_lying_tensor_subclass_rejected(tmp_path):
    code = ("import torch\n"
            "class Liar(torch.Tensor):\n"
            "    def __eq__(self, other):\n        return True\n"
            "    def allclose(self, *a, **k):\n        return True\n"
            "def softmax_naive(x, dim=-1):\n    return torch.zeros_like(x).as_subclass(Liar)\n")
    result = grade(tmp_path, {"softmax_naive": code})
    assert_only_broken(result, {"softmax_naive": "failed"})
    assert "subclass" in by_item(result)["softmax_naive"][0].message


@pytest.mark.parametrize("body, expected", [
    ("return torch.full_like(x, float('nan'))", "NaN"),
    ("return torch.tensor(0.2, dtype=x.dtype)", "shape"),
    ("return x.tolist()", "torch.Tensor"),
    ("return None", "torch.Tensor"),
    ("return x.float() if x.dtype == torch.float64 else x.double()", "dtype"),
])
def test_are_wrong_kinds_of_answers_named(tmp_path, body, expected):
    code = f"import torch\ndef softmax_naive(x, dim=-1):\n    {body}\n"
    result = grade(tmp_path, {"softmax_naive": code})
    assert_only_broken(result, {"softmax_naive": "failed"})
    assert expected in by_item(result)["softmax_naive"][0].message


def test_is_a_memory_bomb_contained(tmp_path):
    code = "def softmax_naive(x, dim=-1):\n    block = bytearray(64 * 2**30)\n    return x\n"
    result = grade(tmp_path, {"softmax_naive": code})
    assert_only_broken(result, {"softmax_naive": "error"})
    assert "MemoryError" in by_item(result)["softmax_naive"][0].message or "died" in \
        by_item(result)["softmax_naive"][0].message


def test_is_a_huge_stdout_truncated(tmp_path):
    code = ("import sys\ndef softmax_naive(x, dim=-1):\n"
            "    for _ in range(2000):\n        sys.stdout.write('x' * 100_000)\n    return x.softmax(dim)\n")
    result = grade(tmp_path, {"softmax_naive": code})
    assert len(result.output) <= 2 * LIMITS.output_bytes + 200
    assert "dropped" in result.output
    assert_only_broken(result, {"softmax_naive": "failed"})  # and torch.softmax is not allowed there


def test_does_a_daemon_outlive_the_worker(tmp_path):
    # forked during a graded call of an item without a no-shortcut rule: with a rule, the operation monitor
    # refuses fork during the call (tests/test_monitor_attacks.py) and no daemon would be left to look for
    code = ("import os, time\n"
            "def attention_scores_loop(inputs):\n"
            "    if os.fork() == 0:\n        os.setsid()\n"
            "        if os.fork() == 0:\n            while True:\n                time.sleep(0.1)\n"
            "        os._exit(0)\n"
            "    return inputs\n")
    before = set(tags_started())
    result = grade(tmp_path, {"attention_scores_loop": code})
    assert_only_broken(result, {"attention_scores_loop": "failed"})
    time.sleep(0.5)
    # only this grading's workers: another grader on the same machine (another test session) has its own
    mine = set(tags_started()) - before
    assert mine, "the grading started no worker?"
    leftovers = [pid for tag in mine for pid in tagged_pids(tag)]
    assert not leftovers, f"worker processes survived grading: {leftovers}"


def test_does_the_leftover_count_see_a_survivor_of_its_own_and_no_other(tmp_path):
    """The count above finds a process of its own grading (a check that cannot fail proves nothing), and not a
    process that another grader's worker left (a tag it did not start)."""
    import subprocess
    import sys
    import uuid

    from autograder import sandbox

    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                env={TAG_VARIABLE: uuid.uuid4().hex})
    own_tag = uuid.uuid4().hex
    own = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env={TAG_VARIABLE: own_tag})
    try:
        time.sleep(0.3)
        with sandbox._LAUNCH_LOCK:
            sandbox._TAGS.append(own_tag)
        leftovers = [pid for tag in tags_started() for pid in tagged_pids(tag)]
        assert own.pid in leftovers and stranger.pid not in leftovers
    finally:
        for process in (stranger, own):
            process.kill()
            process.wait()


def test_is_the_reference_out_of_reach(tmp_path):
    code = ("def softmax_naive(x, dim=-1):\n"
            "    from solutions import softmax_naive as reference\n    return reference(x, dim)\n")
    cheat = ("def softmax_stable(x, dim=-1):\n    import importlib\n"
             "    return importlib.import_module('exercises').__name__\n")
    result = grade(tmp_path, {"softmax_naive": code, "softmax_stable": cheat})
    assert_only_broken(result, {"softmax_naive": "error", "softmax_stable": "error"})
    assert "not allowed" in by_item(result)["softmax_naive"][0].message


@needs_bwrap
def test_can_the_worker_read_source_or_open_a_socket_under_bubblewrap(tmp_path):
    repo = Path(__file__).resolve().parent.parent
    reader = (f"SOURCE = {str(repo / 'source')!r}\n"
              "def softmax_naive(x, dim=-1):\n"
              "    import os\n    os.listdir(SOURCE)\n    return x.exp() / x.exp().sum(dim, keepdim=True)\n")
    listener = socket.socket()  # a server on this machine's loopback that the student tries to reach
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    talker = ("import socket\n"
              "def attention_scores_loop(inputs):\n"
              f"    s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
              "    s.sendall(b'leak')\n    return inputs\n")
    try:
        result = grade(tmp_path, {"softmax_naive": reader, "attention_scores_loop": talker})
        listener.settimeout(0.5)
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing ever connected: the worker has no network
    finally:
        listener.close()
    rows = by_item(result)
    assert result.isolation == "bubblewrap"
    assert_only_broken(result, {"softmax_naive": "error", "attention_scores_loop": "error"})
    assert "FileNotFoundError" in rows["softmax_naive"][0].message
    assert "Connection refused" in rows["attention_scores_loop"][0].message


def test_is_a_write_to_the_report_path_overwritten(tmp_path):
    from autograder.cli import main

    report = tmp_path / "report.json"
    code = (f"REPORT = {str(report)!r}\n"
            "try:\n    open(REPORT, 'w').write('{\"forged\": true}')\nexcept OSError:\n    pass\n"
            "def softmax_naive(x, dim=-1):\n    return x\n")
    folder = tmp_path / "student"
    write_submission(folder, NB1, {"softmax_naive": code})
    assert main(["grade", str(folder), "--json", str(report), "--call-timeout", "5", "-q"]) == 0
    import json

    data = json.loads(report.read_text())
    assert "forged" not in data and data["submissions"][0]["score"] < data["submissions"][0]["max_score"]


def test_does_reduced_isolation_say_so(tmp_path):
    result = grade(tmp_path, {}, use_bwrap=None)
    assert result.isolation == "rlimits"
    assert all(row.status == "passed" for row in result.outcomes if row.device == "cpu")


def test_is_a_missing_answer_cell_reported(tmp_path):
    result = grade(tmp_path, {"context_vectors": None})
    assert_only_broken(result, {"context_vectors": "error"})
    assert "missing" in by_item(result)["context_vectors"][0].message


def test_is_invalid_json_graded_as_failing(tmp_path):
    path = tmp_path / NB1
    path.write_text("{not json", encoding="utf-8")
    result = grade_notebook(NB1, path, seed=1, devices=["cpu"], limits=LIMITS, use_bwrap=BWRAP)
    assert all(row.status == "error" and row.score == 0 for row in result.outcomes if row.device == "cpu")
    assert "invalid JSON" in result.outcomes[0].message


def test_are_magics_dropped_with_a_note(tmp_path):
    answers = answers_from_source(NB1)
    code = "%matplotlib inline\n!ls /\n" + answers["softmax_naive"]
    result = grade(tmp_path, {"softmax_naive": code})
    assert_only_broken(result, {})
    assert any("magic" in note for note in result.notes)


def test_does_grading_finish_within_its_bounds(tmp_path):
    """Two hangs at 4 s each plus the rest: well under a minute even on a loaded 2-core machine."""
    loop = "def attention_scores_loop(inputs):\n    while True:\n        pass\n"
    result = grade(tmp_path, {"attention_scores_loop": loop, "softmax_naive": "while True:\n    pass\n"})
    assert result.wall < 90, result.wall

