"""Sharded + merged == unsharded, on the real grader: the examples (both editions) graded whole and as 2 shards."""

from __future__ import annotations

import json
import shutil

import pytest
from shard_fixtures import BATCH, EXPECTED_SCORES, GRADE, assert_same_reports, outputs, run

pytest_plugins = ["shard_fixtures"]


@pytest.mark.slow
def test_are_merged_shards_the_unsharded_run(unsharded, tmp_path):
    shards = []
    for i in (1, 2):
        out = tmp_path / f"shard{i}"
        run([*GRADE, str(BATCH), "--shard", f"{i}/2", "--json", str(out / "grades.json")])
        shards.append(out / "grades.json")
    graded = [[m["name"] for m in json.loads(p.read_text())["batch"]["members"]] for p in shards]
    names = sorted(EXPECTED_SCORES)  # the examples of both editions (perfect, perfect_zh, ...)
    assert graded == [names[0::2], names[1::2]]  # sorted names, dealt round-robin
    merged = tmp_path / "merged"
    run([*GRADE[:3], "merge", *map(str, reversed(shards)), *outputs(merged)])
    assert_same_reports(merged, unsharded)
    # The comparison can fail: one point more for one test, in the JSON or in the JUnit XML, is caught.
    def more_in_json(text: str) -> str:
        data = json.loads(text)
        data["submissions"][0]["tests"][0]["score"] += 1
        return json.dumps(data)

    for name, change in (("grades.json", more_in_json),
                         ("grades.xml", lambda text: text.replace('name="score" value="0.0"',
                                                                  'name="score" value="1.0"', 1))):
        broken = tmp_path / f"broken-{name}"
        shutil.copytree(merged, broken)
        text = (broken / name).read_text()
        assert change(text) != text
        (broken / name).write_text(change(text))
        with pytest.raises(AssertionError):
            assert_same_reports(broken, unsharded)
