"""End-to-end tests of the grading plugin (driven with pytester), the CLI and its reports."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from grader_fixtures import NB1, answers_from_source, course_points, write_submission

from autograder.cli import main
from autograder.options import MANIFEST_SUFFIX

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "submissions"
# Without a GPU the cuda rows are "GPU not exercised" (skipped, no points); with one they are graded.
GPU = torch.cuda.is_available()
DEVICES = ["cpu", "cuda"] if GPU else ["cpu"]

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def two_students(tmp_path: Path) -> Path:
    """A batch: one student with lesson 1 right, one with softmax_naive wrong; other lessons missing."""
    write_submission(tmp_path / "batch" / "ada" / "self_attention", NB1, {})
    wrong = "import torch\ndef softmax_naive(x, dim=-1):\n    return torch.exp(x) / torch.exp(x).sum()\n"
    write_submission(tmp_path / "batch" / "bob" / "self_attention", NB1, {"softmax_naive": wrong})
    return tmp_path / "batch"


def test_does_the_plugin_name_items_by_item_and_device(pytester: pytest.Pytester, two_students: Path):
    manifest = pytester.path / f"grade{MANIFEST_SUFFIX}"
    manifest.write_text(json.dumps({"submissions": [str(two_students / "bob")]}))
    result = pytester.runpytest_subprocess(str(manifest), "--selfattn-seed=5", "--selfattn-call-timeout=20",
                                           "--junitxml=junit.xml", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([
        "*softmax_naive[[]cpu-float64[]]*",
        *([] if GPU else ["*GPU not exercised*"]),
        "*bob*",
    ])
    outcomes = result.parseoutcomes()
    # lesson 1: 5 items right x 2 dtypes (x 3 more on a GPU: float64, float32, bfloat16);
    # softmax_naive wrong x 2 (x 3 more on a GPU); six other lessons missing
    assert outcomes["passed"] == (10 + 15 if GPU else 10)
    assert outcomes["failed"] >= (2 + 3 if GPU else 2)
    if GPU:
        assert "skipped" not in outcomes, "a GPU is present: cuda items are graded, none skipped"
        assert "softmax_naive[cuda-bfloat16]" in result.stdout.str()
        assert "GPU not exercised" not in result.stdout.str()
    else:
        assert outcomes["skipped"] > 0  # cuda items: "GPU not exercised", never passed
    junit = ET.parse(pytester.path / "junit.xml")
    cases = {c.get("name"): c for c in junit.iter("testcase")}
    wrong = cases["softmax_naive[cpu-float64]"]
    props = {p.get("name"): p.get("value") for p in wrong.iter("property")}
    # one case of three (a 1-D input, where the whole-tensor sum is the right sum) passes: partial credit;
    # the item's point is split over the devices, then over the 2 variants on cpu
    share = 1 / len(DEVICES) / 2
    assert float(props["score"]) == pytest.approx(share / 3, abs=1e-5)
    assert float(props["max_score"]) == pytest.approx(share, abs=1e-6)
    assert wrong.find("failure") is not None
    assert "likely mistake" in wrong.find("failure").get("message") or "dim" in wrong.find("failure").text


def test_does_the_plugin_stay_inert_without_a_manifest(pytester: pytest.Pytester):
    pytester.makepyfile(test_plain="def test_ok():\n    assert 1 + 1 == 2\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "GPU not exercised" not in result.stdout.str()


def test_does_the_cli_grade_a_batch_and_write_every_report(tmp_path: Path, two_students: Path, capsys):
    out = tmp_path / "out"
    code = main(["grade", str(two_students), "--seed", "3", "--json", str(out / "r.json"), "--csv", str(out / "g.csv"),
                 "--junit", str(out / "j.xml"), "--gradescope", str(out / "results.json"), "-q"])
    assert code == 0, "grading ran: exit 0 whatever the score"
    data = json.loads((out / "r.json").read_text())
    subs = {Path(s["path"]).name: s for s in data["submissions"]}
    assert set(subs) == {"ada", "bob"}
    lesson1 = {t["item"]: t for t in subs["ada"]["tests"] if t["notebook"] == NB1 and t["device"] == "cpu"}
    for test in subs["ada"]["tests"]:
        assert {"item", "notebook", "device", "status", "score", "max_score", "message"} <= set(test)
        assert test["status"] in {"passed", "failed", "error", "timeout", "skipped"}
    assert all(t["status"] == "passed" for t in lesson1.values())
    assert subs["ada"]["score"] == 7.0 and subs["ada"]["max_score"] == course_points()
    assert subs["bob"]["score"] == pytest.approx(6 + 1 / 3, abs=1e-3)
    missing = [t for t in subs["ada"]["tests"] if t["notebook"] != NB1 and t["device"] == "cpu"]
    assert missing and all(t["status"] == "failed" and "not found" in t["message"] for t in missing)
    cuda = [t for t in subs["ada"]["tests"] if t["device"] == "cuda"]
    if GPU:  # graded like cpu: lesson 1 right in every variant, bfloat16 included; the other lessons missing
        cuda1 = [t for t in cuda if t["notebook"] == NB1]
        # (a row's score is rounded to 6 places, its max_score is not: 1/6 of a point on cuda)
        assert cuda1 and all(t["status"] == "passed" and t["score"] == t["max_score"]
                             and t["max_score"] > 0 for t in cuda1)
        assert {t["dtype"] for t in cuda1 if t["item"] == "softmax_naive"} == {"float64", "float32", "bfloat16"}
        others = [t for t in cuda if t["notebook"] != NB1]
        assert others and all(t["status"] == "failed" and "not found" in t["message"] for t in others)
        assert subs["ada"]["gpu"] == "exercised"
        assert not any("GPU not exercised" in w for w in subs["ada"]["warnings"])
    else:
        assert cuda and all(t["status"] == "skipped" and t["max_score"] == 0 and "GPU not exercised" in t["message"]
                            for t in cuda)
        assert subs["ada"]["gpu"] == "not exercised"
    rows = list(csv.DictReader((out / "g.csv").open()))
    assert {r["submission"]: round(float(r["score"]), 2) for r in rows} == {"ada": 7.0, "bob": 6.33}
    # one results.json per student of the batch (Gradescope's format holds one submission)
    assert not (out / "results.json").exists()
    for student in ("ada", "bob"):
        gradescope = json.loads((out / f"results-{student}.json").read_text())
        assert gradescope["score"] == subs[student]["score"] and gradescope["tests"]
    assert list(ET.parse(out / "j.xml").getroot().iter("testcase"))  # an iterator is always true: a list is not
    assert "2/2" in capsys.readouterr().out  # the progress line of a batch


def test_does_the_cli_refuse_a_path_that_does_not_exist(tmp_path: Path):
    assert main(["grade", str(tmp_path / "nope")]) == 2


def test_do_fresh_seeds_make_hard_coded_outputs_fail(tmp_path: Path):
    """An answer that returns the values printed for one seed fails on the next run's inputs."""
    from autograder.grading import grade_notebook
    from autograder.runner import default_bwrap
    from autograder.sandbox import Limits
    from exercises.catalogue import ITEMS

    case = ITEMS["attention_scores"].cases(11, "float64")[1]
    frozen = case.inputs["x"] @ case.inputs["x"].transpose(-2, -1)
    code = ("import torch\nFROZEN = torch.tensor(" + repr(frozen.tolist()) + ", dtype=torch.float64)\n"
            "def attention_scores(inputs):\n    return FROZEN.to(inputs.dtype)\n")
    path = write_submission(tmp_path, NB1, {"attention_scores": code})
    rows = [r for r in grade_notebook(NB1, path, 12, ["cpu"], Limits(call_timeout=20), default_bwrap()).outcomes
            if r.item == "attention_scores" and r.device == "cpu"]
    assert all(r.score == 0 for r in rows)


def test_does_the_perfect_example_score_full_marks_and_the_release_zero(tmp_path: Path):
    code = main(["grade", str(EXAMPLES / "perfect"), str(EXAMPLES / "empty"), "--json", str(tmp_path / "r.json"), "-q"])
    assert code == 0
    subs = {Path(s["path"]).name: s for s in json.loads((tmp_path / "r.json").read_text())["submissions"]}
    assert subs["perfect"]["score"] == subs["perfect"]["max_score"] == course_points()
    assert subs["empty"]["score"] == 0
    for device in DEVICES:
        not_done = [t for t in subs["empty"]["tests"] if t["device"] == device]
        assert not_done and all("not implemented" in t["message"] for t in not_done), \
            [t["message"] for t in not_done][:3]
        perfect = [t for t in subs["perfect"]["tests"] if t["device"] == device]
        assert perfect and all(t["status"] == "passed" and t["score"] == t["max_score"]
                               for t in perfect), \
            [f"{t['name']}: {t['message']}" for t in perfect if t["status"] != "passed"][:3]
    # the points each device carries: all of them on cpu alone, half each with a GPU
    on_cpu = sum(t["max_score"] for t in subs["perfect"]["tests"] if t["device"] == "cpu")
    assert on_cpu == pytest.approx(course_points() / len(DEVICES), abs=1e-3)
    cuda = [t for t in subs["perfect"]["tests"] if t["device"] == "cuda"]
    if GPU:
        assert sum(t["score"] for t in cuda) == pytest.approx(course_points() / 2, abs=1e-3)
        assert "bfloat16" in {t["dtype"] for t in cuda}
    else:
        assert cuda and all(t["status"] == "skipped" and t["max_score"] == 0 for t in cuda)


@pytest.mark.slow
def test_is_a_correct_function_graded_with_tiled_stand_ins_free_of_the_tiled_rule(tmp_path: Path):
    """Lesson 10: a correct ``FlashAttentionFunction`` over a wrong ``flash_attention_backward`` is graded again with
    the reference forward and backward as stand-ins. The stand-ins' own tensors (the worker decoding the grader's
    answer) are the grader's work, not the student's: the tiled rule must not charge them to the class (it did:
    "constructed a tensor of shape (10) in aten.view ..." and 0.21 of 1.5 points per variant)."""
    from autograder.grading import grade_notebook
    from autograder.runner import default_bwrap
    from autograder.sandbox import Limits

    nb10 = "10_flash_attention_backward.ipynb"
    wrong = (FIXTURES / "mistakes" / "flash_attention_backward__dS_without_D.py").read_text()
    path = write_submission(tmp_path, nb10, {"flash_attention_backward": wrong})
    result = grade_notebook(nb10, path, 5, ["cpu"], Limits(call_timeout=30), default_bwrap())
    rows = {(r.item, r.variant): r for r in result.outcomes if r.device == "cpu"}
    assert rows[("flash_attention_backward", "float64")].status == "failed"
    for variant in ("float64", "float32"):
        row = rows[("FlashAttentionFunction", variant)]
        assert row.status == "passed" and row.score == row.max_score, row.message
        assert "correct once" in row.message and "`flash_attention_backward`" in row.message


def test_is_a_failed_dependency_isolated(tmp_path: Path):
    """MultiHeadAttention that calls a broken split_heads earns its points, with a message saying so."""
    from autograder.grading import grade_notebook
    from autograder.runner import default_bwrap
    from autograder.sandbox import Limits

    nb5 = "05_multi_head_attention.ipynb"
    bad_split = ("def split_heads(x, num_heads):\n    b, n, d = x.shape\n"
                 "    return x.view(b, num_heads, n, d // num_heads)\n")
    bad_causal = answers_from_source(nb5)["causal_attention_from_lesson_4"].replace(
        "torch.softmax(", "0.5 * torch.softmax(")
    path = write_submission(tmp_path, nb5, {"split_heads": bad_split, "causal_attention_from_lesson_4": bad_causal})
    result = grade_notebook(nb5, path, 4, ["cpu"], Limits(call_timeout=20), default_bwrap())
    rows = {(r.item, r.variant): r for r in result.outcomes if r.device == "cpu"}
    assert rows[("split_heads", "float64")].status == "failed"
    for item in ("MultiHeadAttention", "MultiHeadAttentionWrapper"):
        row = rows[(item, "float64")]
        assert row.status == "passed" and row.score == row.max_score, row.message
        assert "correct once" in row.message
    assert "`split_heads`" in rows[("MultiHeadAttention", "float64")].message
    assert "`CausalAttention`" in rows[("MultiHeadAttentionWrapper", "float64")].message
