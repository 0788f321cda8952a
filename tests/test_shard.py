"""--shard I/N and `python -m autograder merge` on made-up reports (fast; the real runs are in test_shard_merge.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from autograder import cli, merge, report, shard
from autograder.grading import NotebookResult, TestOutcome
from autograder.shard import ShardError

pytest_plugins = ["pytester"]
NAMES = ["zoe", "ada", "bob", "cy", "dan", "eve", "fay"]


def _manifest(root: str, names=NAMES) -> dict:
    return {"submissions": [f"{root}/{n}" for n in names], "names": list(names)}


def _options(spec: str | None, seed: int | None = 7) -> dict:
    return {"shard": spec, "seed": seed}


# --- slicing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [("1/1", (1, 1)), ("2/5", (2, 5)), (" 3 / 3 ", (3, 3))])
def test_parse_shard_reads_i_of_n(text, expected):
    assert shard.parse_shard(text) == expected


@pytest.mark.parametrize("text", ["0/3", "4/3", "1/0", "-1/3", "1", "a/b", "1/2/3", ""])
def test_parse_shard_refuses_bad_values(text):
    with pytest.raises(ShardError, match="--shard"):
        shard.parse_shard(text)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 9])
def test_do_the_shards_partition_the_batch_round_robin_over_sorted_names(count):
    batch = [shard.Member(Path(f"/b/{n}"), n, i) for i, n in enumerate(NAMES)]
    slices = [shard.select(batch, i, count) for i in range(1, count + 1)]
    names = [m.name for s in slices for m in s]
    assert sorted(names) == sorted(NAMES) and len(names) == len(set(names))  # every one, once
    sizes = [len(s) for s in slices]
    assert max(sizes) - min(sizes) <= 1
    first = sorted(NAMES)[::count]
    assert sorted(m.name for m in slices[0]) == first
    for s in slices:  # kept in grading order
        assert [m.position for m in s] == sorted(m.position for m in s)


def test_does_the_slice_depend_on_names_only_not_on_where_the_batch_is_mounted():
    here = shard.plan(_manifest("/mnt/a/batch"), _options("2/3"))
    there = shard.plan(_manifest("/scratch/x/y/other"), _options("2/3"))
    assert [p.name for p in here[0]] == [p.name for p in there[0]] == ["bob", "eve"]
    assert here[1]["members"][0]["name"] == "bob" and here[1]["shard"] == {"index": 2, "count": 3}
    # ...and not on the order the submissions were listed in
    shuffled = shard.plan(_manifest("/b", list(reversed(NAMES))), _options("2/3"))
    assert sorted(p.name for p in shuffled[0]) == ["bob", "eve"]


def test_batch_name_is_relative_to_the_argument():
    assert shard.batch_name(Path("/m/batch"), Path("/m/batch/ada")) == "ada"
    assert shard.batch_name(Path("/m/batch/ada"), Path("/m/batch/ada")) == "ada"


def test_is_sharding_without_a_seed_refused():
    with pytest.raises(ShardError, match="explicit --seed"):
        shard.plan(_manifest("/b"), _options("1/2", seed=None))
    assert len(shard.plan(_manifest("/b"), _options(None, seed=None))[0]) == len(NAMES)  # unsharded: fine


def test_are_two_submissions_of_one_name_refused():
    data = {"submissions": ["/a/ada", "/b/ada"], "names": ["ada", "ada"]}
    with pytest.raises(ShardError, match="both named 'ada'"):
        shard.plan(data, _options("1/2"))


def test_does_the_course_version_change_with_a_source_notebook(tmp_path):
    (tmp_path / "01.ipynb").write_text("{}")
    before = shard.course_version(tmp_path)
    assert shard.course_version(tmp_path) == before
    (tmp_path / "01.ipynb").write_text('{"cells": []}')
    assert shard.course_version(tmp_path) != before


@pytest.mark.parametrize("argv,message", [
    (["--shard", "1/2"], "explicit --seed"),
    (["--shard", "3/2", "--seed", "1"], "between 1 and N"),
    (["--shard", "x", "--seed", "1"], "must read I/N"),
])
def test_does_the_cli_refuse_a_bad_shard_with_exit_2(argv, message, capsys):
    assert cli.main(["grade", str(Path(__file__).parent.parent / "examples/submissions"), *argv]) == 2
    assert message in capsys.readouterr().err


# --- merging ---------------------------------------------------------------------------------------


def _sub(path: str, score: float, seed: int = 7, errors: dict | None = None) -> report.SubmissionReport:
    sub = report.SubmissionReport(path, seed, ["cpu"], "bubblewrap")
    row = TestOutcome("softmax_naive", "01_attention_scores.ipynb", "cpu", "float64",
                      "passed" if score else "failed", score, 1.0, "" if score else "wrong values")
    sub.add(NotebookResult("01_attention_scores.ipynb", [row], [], "bubblewrap", 0.1))
    sub.grader_errors.update(errors or {})
    return sub


def _run(spec: str | None, seed: int = 7, version: str = "v1", errors: dict | None = None,
         names=("ada", "bob", "cy")) -> dict:
    """The JSON report a grade run of the batch ``names`` (or its shard ``spec``) would write."""
    mine, batch = shard.plan(_manifest("/b", names), _options(spec, seed))
    batch["course_version"] = version
    subs = [_sub(str(p), float(len(p.name) % 2), seed, (errors or {}).get(p.name)) for p in mine]
    return report.report_json(subs, {"seed": seed, "devices": ["cpu"], **batch})


def test_is_a_merge_of_shards_the_unsharded_report():
    whole = _run(None)
    for count in (1, 2, 3, 4):
        parts = [_run(f"{i}/{count}") for i in range(count, 0, -1)]  # any order
        assert merge.merge_reports(parts) == whole


@pytest.mark.parametrize("change,message", [
    ({"seed": 8}, "differ in seed"),
    ({"version": "v2"}, "differ in course_version"),
])
def test_are_shards_of_different_runs_refused(change, message):
    with pytest.raises(ShardError, match=message):
        merge.merge_reports([_run("1/2"), _run("2/2", **change)])


def test_are_shards_on_different_devices_refused():
    other = _run("2/2")
    other["batch"]["devices"] = ["cpu", "cuda"]
    with pytest.raises(ShardError, match="differ in devices"):
        merge.merge_reports([_run("1/2"), other])


def test_are_a_missing_shard_a_repeated_shard_and_an_overlap_refused():
    with pytest.raises(ShardError, match="2/3 missing"):
        merge.merge_reports([_run("1/3"), _run("3/3")])
    with pytest.raises(ShardError, match="more than once"):
        merge.merge_reports([_run("1/2"), _run("1/2"), _run("2/2")])
    with pytest.raises(ShardError, match="different shard counts"):
        merge.merge_reports([_run("1/2"), _run("2/3")])
    forged = _run("2/2")
    forged["batch"]["members"].append(_run("1/2")["batch"]["members"][0])
    with pytest.raises(ShardError, match="in both"):
        merge.merge_reports([_run("1/2"), forged])
    with pytest.raises(ShardError, match="unsharded report"):
        merge.merge_reports([_run(None), _run("1/2")])
    short = _run("2/2")
    short["batch"]["members"].clear()
    with pytest.raises(ShardError, match="hold 2 of the batch's 3"):
        merge.merge_reports([_run("1/2"), short])


def _merge_cli(tmp_path, reports: list[dict]) -> int:
    paths = []
    for i, data in enumerate(reports):
        paths.append(tmp_path / f"s{i}.json")
        paths[-1].write_text(json.dumps(data))
    args = argparse.Namespace(reports=paths, json=tmp_path / "m.json", csv=tmp_path / "m.csv",
                              junit=tmp_path / "m.xml", gradescope=tmp_path / "gs" / "results.json")
    return merge.main(args)


def test_does_a_not_graded_submission_stay_not_graded_and_the_merge_exit_2(tmp_path):
    errors = {"bob": {"02.ipynb": "worker did not start"}}
    code = _merge_cli(tmp_path, [_run("1/2", errors=errors), _run("2/2", errors=errors)])
    assert code == 2
    data = json.loads((tmp_path / "m.json").read_text())
    assert data == _run(None, errors=errors)
    assert data["not_graded"] == [{"path": "/b/bob", "errors": {"02.ipynb": "worker did not start"}}]
    assert "bob" not in (tmp_path / "m.csv").read_text()
    assert sorted(p.name for p in (tmp_path / "gs").iterdir()) == ["results-ada.json", "results-cy.json"]
    assert "[grader error] could not grade 02.ipynb of bob" in (tmp_path / "m.xml").read_text()
    assert _merge_cli(tmp_path, [_run("1/2"), _run("2/2")]) == 0


def test_does_the_merge_cli_refuse_with_exit_2(tmp_path, capsys):
    assert _merge_cli(tmp_path, [_run("1/2"), _run("2/2", seed=9)]) == 2
    assert "cannot merge" in capsys.readouterr().err
    (tmp_path / "old.json").write_text('{"submissions": []}')
    args = argparse.Namespace(reports=[tmp_path / "old.json"], json=None, csv=None, junit=None, gradescope=None)
    assert merge.main(args) == 2 and "`batch` record" in capsys.readouterr().err


def test_are_the_merged_csv_and_gradescope_files_the_graders_own(tmp_path):
    subs = [_sub("/b/ada", 1.0), _sub("/b/bob", 0.0)]
    report.write_csv(subs, tmp_path / "g.csv")
    report.write_gradescope(subs, tmp_path / "gs" / "results.json")
    merge.write_outputs(report.report_json(subs, {"members": [{"path": "/b/ada"}, {"path": "/b/bob"}]}),
                        csv_path=tmp_path / "m.csv", gradescope_path=tmp_path / "mgs" / "results.json")
    assert (tmp_path / "m.csv").read_text() == (tmp_path / "g.csv").read_text()
    for name in ("results-ada.json", "results-bob.json"):
        assert (tmp_path / "mgs" / name).read_text() == (tmp_path / "gs" / name).read_text()


# --- the pytest plugin's --selfattn-shard ----------------------------------------------------------


def _plugin_run(pytester, *args):
    for name in ("ada", "bob", "cy"):
        (pytester.path / "batch" / name).mkdir(parents=True)
    manifest = pytester.path / "run.selfattn.json"
    manifest.write_text(json.dumps({"submissions": [str(pytester.path / "batch" / n) for n in ("cy", "ada", "bob")]}))
    return pytester.runpytest_inprocess(str(manifest), "--collect-only", "-q", "--selfattn-no-canary", *args)


def test_does_the_plugin_refuse_a_shard_without_a_seed(pytester):
    result = _plugin_run(pytester, "--selfattn-shard=1/2")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*--shard needs an explicit --seed*"])


def test_does_the_plugin_collect_only_its_shard(pytester):
    result = _plugin_run(pytester, "--selfattn-shard=2/2", "--selfattn-seed=3")
    collected = {line.split("::")[1] for line in result.stdout.lines if "::" in line}
    assert collected == {"bob"}, result.stdout.str()
