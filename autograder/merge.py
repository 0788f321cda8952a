"""``python -m autograder merge SHARD.json... --json/--csv/--junit/--gradescope OUT``: shards back into one run.

Each ``grade --shard I/N --seed S --json ...`` run writes a JSON report whose ``batch`` record says
which shard it is, the batch's size and where each of its submissions stands in the batch
(autograder/shard.py). The merge checks that the shards belong together, puts the submissions back
in the unsharded order and writes the reports an unsharded run with the same seed writes: the JSON
(byte for byte but for the ``seconds`` timings), the CSV and the Gradescope files through the same
functions as the grader (autograder/report.py), and a JUnit XML with the same test cases, outcomes
and points as pytest's ``--junitxml`` (timings are not kept in the JSON, so they read 0).

It refuses (exit 2, saying why) shards with different seeds, devices, course versions, batch sizes or
shard counts, a shard given twice, a missing shard, and two shards that both graded one submission.
A submission that a shard could not grade (``not_graded``) stays not graded, and the merge then exits
2, as the grader would have.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from xml.sax.saxutils import quoteattr

from autograder import report
from autograder.options import BY_DEST
from autograder.shard import ShardError
from exercises.i18n import language, tr

MANIFEST_NAME = "grading.selfattn.json"  # what pytest names the test cases after (autograder/cli.py)
AGREE = ("seed", "devices", "course_version", "size")  # every shard of one batch must agree on these


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``merge`` sub-command of ``python -m autograder``."""
    parser = sub.add_parser("merge", help="combine the JSON reports of `grade --shard I/N` runs into one run's reports")
    parser.add_argument("reports", nargs="+", type=Path, metavar="SHARD_REPORT.json")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the merged JSON report here")
    parser.add_argument("--csv", type=Path, metavar="PATH", help="write the merged CSV of grades here")
    parser.add_argument("--junit", type=Path, metavar="PATH", help="write the merged JUnit XML here")
    parser.add_argument("--gradescope", type=Path, metavar="PATH",
                        help="write Gradescope's results.json here (a batch: results-<student>.json beside it)")
    lang = BY_DEST["lang"]  # the grader's option, once: here it is the language of the merge's own lines
    parser.add_argument(f"--{lang.name}", dest=lang.dest, **lang._kwargs())


def main(args: argparse.Namespace) -> int:
    """Merge, write what was asked; 0, or 2 when the shards cannot be merged or somebody was not graded."""
    with language(getattr(args, "lang", None) if getattr(args, "lang", None) in ("en", "zh") else "en"):
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    try:
        reports = [load(path) for path in args.reports]
        merged = merge_reports(reports, [str(p) for p in args.reports])
    except ShardError as exc:
        print(tr("error: cannot merge: {why}").format(why=exc), file=sys.stderr)
        return 2
    write_outputs(merged, json_path=args.json, csv_path=args.csv, junit_path=args.junit,
                  gradescope_path=args.gradescope)
    print(report_summary(merged))
    if merged.get("not_graded"):
        print(tr("could not grade {count} submission(s): the grader failed, not the student (listed under "
                 "`not_graded` in the JSON); exit status 2").format(count=len(merged["not_graded"])), file=sys.stderr)
        return 2
    return 0


def load(path: Path) -> dict:
    """A shard's JSON report; ``ShardError`` when it is unreadable or has no ``batch`` record."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ShardError(tr("cannot read {name}: {why}").format(name=path, why=exc)) from exc
    if not isinstance(data, dict) or not isinstance(data.get("batch"), dict):
        raise ShardError(tr("{path} is not a JSON report of `python -m autograder grade` with a `batch` record "
                            "(written by an older grader, or not a report)").format(path=path))
    return data


def merge_reports(reports: list[dict], labels: list[str] | None = None) -> dict:
    """The unsharded run's JSON report from its shards' reports; ``ShardError`` when they do not belong together."""
    labels = labels or [f"report {i + 1}" for i in range(len(reports))]
    batches = [r["batch"] for r in reports]
    for key in AGREE:
        values = {json.dumps(b.get(key)) for b in batches}
        if len(values) > 1:
            seen = ", ".join(f"{label}: {json.dumps(b.get(key))}" for label, b in zip(labels, batches, strict=True))
            raise ShardError(tr("the reports differ in {key} ({seen}); only shards of one run (same --seed, "
                                "devices, course version and batch) can be merged").format(key=key, seen=seen))
    shards = [b.get("shard") for b in batches]
    if any(s is None for s in shards) and len(reports) > 1:
        raise ShardError(tr("an unsharded report cannot be merged with others (it already holds the whole batch)"))
    if shards[0] is not None:
        counts = {s["count"] for s in shards}
        if len(counts) > 1:
            raise ShardError(tr("the reports come from different shard counts ({counts})").format(
                counts=sorted(counts)))
        indices = [s["index"] for s in shards]
        twice = sorted({i for i in indices if indices.count(i) > 1})
        if twice:
            raise ShardError(tr("shard(s) {shards} given more than once").format(shards=", ".join(map(str, twice))))
        count = counts.pop()
        missing = sorted(set(range(1, count + 1)) - set(indices))
        if missing:
            raise ShardError(tr("shard(s) {shards} missing").format(shards=", ".join(f"{i}/{count}" for i in missing)))
    members: dict[int, dict] = {}
    owner: dict[str, str] = {}
    for label, batch in zip(labels, batches, strict=True):
        for member in batch["members"]:
            if member["name"] in owner:
                raise ShardError(tr("submission {name!r} is in both {first} and {second}").format(
                    name=member["name"], first=owner[member["name"]], second=label))
            owner[member["name"]] = label
            members[member["position"]] = member
    size = batches[0]["size"]
    if sorted(members) != list(range(size)):
        raise ShardError(tr("the reports hold {count} of the batch's {size} submissions").format(count=len(members),
                                                                                               size=size))
    position = {m["path"]: p for p, m in members.items()}
    graded = sorted((e for r in reports for e in r["submissions"]), key=lambda e: position[e["path"]])
    not_graded = sorted((e for r in reports for e in r.get("not_graded", [])), key=lambda e: position[e["path"]])
    batch = {**{k: v for k, v in batches[0].items() if k != "members"}, "shard": None,
             "members": [members[p] for p in sorted(members)]}
    return {"submissions": graded, **({"not_graded": not_graded} if not_graded else {}), "batch": batch}


def empty_shard_report(batch: dict, seed: int, devices: list[str] | None) -> dict:
    """The JSON report of a shard that no submission fell to (more shards than submissions)."""
    from exercises.catalogue import available_devices

    present = available_devices()
    return {"submissions": [], "batch": {"seed": seed, "devices": [d for d in (devices or present) if d in present],
                                         **batch}}


def write_outputs(data: dict, *, json_path: Path | None = None, csv_path: Path | None = None,
                  junit_path: Path | None = None, gradescope_path: Path | None = None) -> None:
    """Write a JSON report dict's JSON, CSV, JUnit XML and Gradescope files, as the grader writes them."""
    if json_path:
        report.write_json_report(data, Path(json_path))
    if csv_path:
        report._atomic_write(Path(csv_path), report.csv_text(data["submissions"]))
    if junit_path:
        report._atomic_write(Path(junit_path), junit_xml(data))
    if gradescope_path:
        graded = {e["path"]: e for e in data["submissions"]}
        paths = [m["path"] for m in data["batch"]["members"]]
        for path, target in zip(paths, report.gradescope_targets(paths, Path(gradescope_path)), strict=True):
            if path in graded:  # none for a submission not graded: Gradescope shows a failure, not a zero
                report.write_gradescope_one(graded[path], target)


def junit_xml(data: dict) -> str:
    """JUnit XML shaped like pytest's ``--junitxml`` of the grading run: one test case per graded test, its
    score, max_score and status as properties; one failing case per notebook the grader could not grade."""
    cases, failures, skipped = [], 0, 0
    for entry in data["submissions"]:
        for t in pytest_order(entry["tests"]):
            props = "".join(f'<property name="{k}" value={quoteattr(str(t[k]))} />'
                            for k in ("score", "max_score", "status"))
            body = ""
            if t["status"] == "skipped":
                skipped += 1
                body = f'<skipped type="pytest.skip" message={quoteattr(t["message"])} />'
            elif t["status"] != "passed":
                failures += 1
                text = f"[{t['status']}] {t['message']}"
                body = f"<failure message={quoteattr(text)}>{_text(text)}</failure>"
            cases.append(_case(entry["path"], t["notebook"], t["name"], f"<properties>{props}</properties>{body}"))
    for entry in data.get("not_graded", []):
        for notebook, why in entry["errors"].items():
            failures += 1
            text = f"[grader error] could not grade {notebook} of {Path(entry['path']).name}: {why}"
            cases.append(_case(entry["path"], notebook, "grader", f"<failure message={quoteattr(text)}>"
                                                                   f"{_text(text)}</failure>"))
    stamp = datetime.now(UTC).isoformat()
    return ('<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests">'
            f'<testsuite name="pytest" errors="0" failures="{failures}" skipped="{skipped}" tests="{len(cases)}" '
            f'time="0.000" timestamp="{stamp}" hostname={quoteattr(socket.gethostname())}>'
            + "".join(cases) + "</testsuite></testsuites>")


def pytest_order(tests: list[dict]) -> list[dict]:
    """The tests in the order pytest collects their items: by notebook, then item, then device (cpu before
    cuda), then dtype; the JSON lists a notebook's cuda rows after its cpu rows."""
    notebooks = list(dict.fromkeys(t["notebook"] for t in tests))
    items = list(dict.fromkeys((t["notebook"], t["item"]) for t in tests))
    devices = ["cpu", "cuda"]
    return sorted(tests, key=lambda t: (notebooks.index(t["notebook"]), items.index((t["notebook"], t["item"])),
                                        devices.index(t["device"]) if t["device"] in devices else len(devices)))


def _case(path: str, notebook: str, name: str, inner: str) -> str:
    classname = f"{MANIFEST_NAME}.{Path(path).name}.{notebook}"
    return f'<testcase classname={quoteattr(classname)} name={quoteattr(name)} time="0.000">{inner}</testcase>'


def _text(text: str) -> str:
    return quoteattr(text)[1:-1]


def report_summary(data: dict) -> str:
    """One line per submission of the merged report, like the grader's summary table."""
    lines = [f"{'submission':<30} {'score':>8} {'max':>6}"]
    graded = {e["path"]: e for e in data["submissions"]}
    for member in data["batch"]["members"]:
        entry = graded.get(member["path"])
        if entry is None:
            lines.append(f"{member['name']:<30} {tr('not graded (grader error)'):>15}")
        else:
            lines.append(f"{member['name']:<30} {entry['score']:>8g} {entry['max_score']:>6g}")
    return "\n".join(lines)
