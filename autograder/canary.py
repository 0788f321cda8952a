"""Before a run: grade a known-good submission (the reference solutions) through the very same worker.

If the grader cannot give the reference full marks here, with these limits, this isolation mode and
these devices, it cannot grade anybody fairly: every student would be blamed for the grader's fault
(a directory the worker's user cannot reach, a device compared as a string, a tolerance too tight for
a dtype, a memory limit torch cannot start under). The run stops instead, naming the cause.

The submission is the ``solutions`` package itself, one cell per lesson module, so it needs no
notebook and no lesson's demos: one worker start and the calls of every item, on every device,
in every dtype variant, judged by the same code as a student's.
"""

from __future__ import annotations

import inspect
import re
import time
from dataclasses import dataclass

import torch

from autograder.grading import TestOutcome, build_calls, judge_run
from autograder.intake import PreparedNotebook
from autograder.pool import WorkerPool
from autograder.runner import CallResult, CallSpec, CellSpec, GraderError, run_calls
from autograder.sandbox import Limits
from exercises.cases import call, tensor_arg
from exercises.catalogue import ITEMS
from exercises.i18n import tr, translate_made
from exercises.op_guard import SOFTMAX, TAMPER_REASONS

CANARY_SEED = 20240611  # fixed: a canary that fails must fail again when rerun
RELATIVE_IMPORT = re.compile(r"^from \.\w+ import \(?[^)]*?\)?$", re.MULTILINE | re.DOTALL)


@dataclass
class CanaryResult:
    """What the canary found: every row passed, or the rows that did not and the worker's output."""

    outcomes: list[TestOutcome]
    isolation: str
    devices: list[str]
    seconds: float
    output: str

    @property
    def failed(self) -> list[TestOutcome]:
        return [o for o in self.outcomes if o.status != "passed"]


def reference_cells() -> list[CellSpec]:
    """The reference solutions as notebook cells: one per lesson module, in lesson order.

    A module's relative imports (lesson 5 uses lesson 4's ``CausalAttention``) are dropped: the earlier
    cell has defined those names already, as in a student's notebook.
    """
    import solutions

    modules = sorted({inspect.getmodule(obj) for name, obj in vars(solutions).items()
                      if not name.startswith("_") and inspect.getmodule(obj) is not None
                      and inspect.getmodule(obj).__name__.startswith("solutions.")}, key=lambda m: m.__name__)
    return [CellSpec(module.__name__, RELATIVE_IMPORT.sub("", inspect.getsource(module)), "given")
            for module in modules]


# The operation monitor must see a forbidden built-in reached by a route no list of names holds, and a tensor
# larger than its bound built through a view, in the very worker that grades: else every rule is void.
MONITOR_PROBE = CellSpec("canary_operation_monitor", (
    "import torch\n"
    "def _canary_monitor_probe(x):\n"
    "    hidden = getattr(torch.nn.functional, 'soft' + 'max')\n"
    "    outer = (x.unsqueeze(-1) * x.unsqueeze(-2)).reshape(-1)  # n * n elements, through a view\n"
    "    return hidden(x, dim=-1) + outer[: x.shape[-1]]\n"), "given")
PROBE_SIZE = 8


def monitor_problem(result: CallResult | None) -> str | None:
    """Why the monitor probe's report shows the monitor not working in the worker, else None."""
    if result is None or result.status != "ok":
        status, error = (result.status, result.error) if result else ("missing", "")
        return tr("the probe call did not run ({status}: {error})").format(status=status, error=error)
    report = result.guard
    if report is None:
        return tr("the worker sent no report from the operation monitor")
    if SOFTMAX not in report["used"]:
        return tr("a softmax reached through getattr was not seen (report: {report})").format(report=report)
    if not report["too_big"] or report["too_big"]["numel"] != PROBE_SIZE * PROBE_SIZE:
        return tr("a ({size}, {size}) tensor above the bound of {size} elements went unseen ({report})").format(
            size=PROBE_SIZE, report=report)
    if report["tampered"]:
        return tr("the monitor reported itself switched off by grader code ({why})").format(
            why=translate_made(report["tampered"], TAMPER_REASONS))
    return None


def run_canary(devices: list[str], limits: Limits, use_bwrap: str | None,
               pool: WorkerPool | None = None) -> CanaryResult:
    """Grade the reference through the worker on ``devices``; the outcome of every row."""
    started = time.monotonic()
    items = list(ITEMS.values())
    plan, calls = build_calls(items, devices, CANARY_SEED)
    cells = reference_cells() + [MONITOR_PROBE]
    probe = CallSpec(len(calls), call("_canary_monitor_probe", tensor_arg("x")),
                     {"x": torch.linspace(-1, 1, PROBE_SIZE)}, devices[0], None, guard={"max_numel": PROBE_SIZE})
    run = run_calls(cells, calls + [probe], limits, use_bwrap, pool)
    points = {f"test_{item.name}": 1.0 for item in items}
    outcomes = judge_run(items, "(canary)", devices, plan, run.calls, points, PreparedNotebook(cells=[]))
    problem = monitor_problem(run.calls.get(probe.id))
    if problem:
        outcomes.append(TestOutcome("(operation monitor)", "(canary)", devices[0], None, "failed", 0.0, 1.0,
                                    tr("the operation monitor does not work in the worker: {problem}").format(
                                        problem=problem)))
    cell_errors = [f"cell {spec.grade_id}: {cell.status} {cell.error}" for spec, cell in
                   zip(cells, run.cells, strict=True) if cell.status != "ok"]
    output = "\n".join(cell_errors + [run.output])
    return CanaryResult(outcomes, run.isolation, devices, time.monotonic() - started, output)


def check_grader(devices: list[str], limits: Limits, use_bwrap: str | None,
                 pool: WorkerPool | None = None) -> CanaryResult:
    """Run the canary; ``GraderError`` (with the cause) unless the reference gets full marks everywhere."""
    result = run_canary(devices, limits, use_bwrap, pool)
    if result.failed:
        rows = "\n".join(f"    - {o.name}: [{o.status}] {o.message[:300]}" for o in result.failed[:8])
        more = "\n    " + tr("... and {count} more").format(count=len(result.failed) - 8) if len(result.failed) > 8 \
            else ""
        raise GraderError(
            tr("the grader's self-check failed: the reference solutions, graded through the worker, lost points on "
               "{failed} of {total} rows (isolation: {isolation}; devices: {devices}; seed {seed}). Nobody was graded: "
               "these failures would have been charged to every student.").format(
                failed=len(result.failed), total=len(result.outcomes), isolation=result.isolation,
                devices=", ".join(devices), seed=CANARY_SEED)
            + f"\n{rows}{more}\n  " + tr("the worker's output:") + f"\n{result.output.strip()[-2000:]}")
    return result
