"""The grader's JSON report as GitHub Actions sees a result: job summary, step outputs, Classroom's points.

``python summary.py REPORT.json`` (REPORT from ``python -m autograder grade ONE_SUBMISSION --json``):
- appends a Markdown table (one row per graded item: lesson, item, points, what to fix) to
  ``$GITHUB_STEP_SUMMARY``;
- appends ``score``, ``max_score``, ``graded`` and ``result`` to ``$GITHUB_OUTPUT`` (``result`` is the
  base64 JSON that ``classroom-resources/autograding-grading-reporter`` reads, for courses that use it);
- prints the two notices GitHub Classroom reads a score from: "Points X/Y" titled "Autograding
  complete" and ``{"totalPoints": X, "maxPoints": Y}`` titled "Autograding report" (the reporter's
  convention).
A report with a submission the grader could not grade gives no score, no notice, and exit status 2.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

MESSAGE_CHARS = 300


def number(x: float) -> int | float:
    """A score as GitHub Classroom prints it: 40 rather than 40.0."""
    return int(x) if float(x).is_integer() else round(x, 4)


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell (messages can quote student code)."""
    text = " ".join(str(text).split())
    if len(text) > MESSAGE_CHARS:
        text = text[:MESSAGE_CHARS] + "..."
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def items(sub: dict) -> list[dict]:
    """One row per graded item (its rows over devices and dtypes added up), in the report's order."""
    rows: dict[tuple[str, str], dict] = {}
    for t in sub["tests"]:
        row = rows.setdefault((t["notebook"], t["item"]), {"notebook": t["notebook"], "item": t["item"],
                                                            "score": 0.0, "max_score": 0.0, "messages": []})
        row["score"] += t["score"]
        row["max_score"] += t["max_score"]
        if t["status"] not in ("passed", "skipped") and t["message"]:
            row["messages"].append(f"{t['name']}: {t['message']}")
    return list(rows.values())


def markdown(sub: dict) -> str:
    """The job summary: the score, the warnings, then the items table."""
    lines = [f"## Autograding: {number(sub['score']):g} / {number(sub['max_score']):g} points", ""]
    lines += [f"> {cell(w)}" for w in sub.get("warnings", [])] + ([""] if sub.get("warnings") else [])
    lines += ["| lesson | item | points | what to fix |", "| --- | --- | ---: | --- |"]
    for row in items(sub):
        fix = cell(row["messages"][0]) if row["messages"] else ""
        lines.append(f"| {cell(row['notebook'])} | {cell(row['item'])} | "
                     f"{number(row['score']):g} / {number(row['max_score']):g} | {fix} |")
    return "\n".join(lines) + "\n"


def classroom_result(sub: dict) -> dict:
    """The reporter's runner result: version 1, overall status, max score and one test per item."""
    tests = [{"name": f"{row['notebook']} :: {row['item']}", "score": number(row["score"]),
              "max_score": number(row["max_score"]),
              "status": "pass" if row["score"] >= row["max_score"] else "fail",
              "message": row["messages"][0][:MESSAGE_CHARS] if row["messages"] else ""} for row in items(sub)]
    return {"version": 1, "status": "pass" if all(t["status"] == "pass" for t in tests) else "fail",
            "max_score": number(sub["max_score"]), "tests": tests}


def _append(variable: str, text: str) -> None:
    target = os.environ.get(variable)
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    report = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    subs = report.get("submissions", [])
    if report.get("not_graded") or len(subs) != 1:
        why = "; ".join(f"{nb}: {err}" for entry in report.get("not_graded", []) for nb, err in entry["errors"].items())
        _append("GITHUB_STEP_SUMMARY", "## Not graded\n\nThe autograder failed on this submission: this is not your "
                f"fault, and no score was given. Tell course staff.\n\n{cell(why or 'no submission in the report')}\n")
        _append("GITHUB_OUTPUT", "graded=false\n")
        return 2
    sub = subs[0]
    total, maximum = number(sub["score"]), number(sub["max_score"])
    _append("GITHUB_STEP_SUMMARY", markdown(sub))
    encoded = base64.b64encode(json.dumps(classroom_result(sub)).encode()).decode()
    _append("GITHUB_OUTPUT", f"graded=true\nscore={total}\nmax_score={maximum}\nresult={encoded}\n")
    print(f"::notice title=Autograding complete::Points {total}/{maximum}")
    report_json = json.dumps({"totalPoints": total, "maxPoints": maximum}, separators=(",", ":"))
    print(f"::notice title=Autograding report::{report_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
