"""Does each layer import only downward, with no circles, and does the kernel check stay light?

``solutions`` <- ``exercises`` (the course) <- ``autograder`` (the engine) <- front ends. Imports
inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from autograder import options

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("solutions", "exercises", "autograder", "delivery")
LAYER = {"solutions": 0, "exercises": 1, "autograder": 2, "delivery": 3}
# Front ends inside autograder/, each a subpackage of its own: they import the engine, the engine never
# imports them, and they do not import one another (issue 18, "rooms of their own").
FRONT_ENDS = ("autograder.nbgrader", "autograder.examples")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """The project modules ``path`` imports, anywhere in the file (relative imports resolved)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES}
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        edges[name] = {m for m in project_imports(path) if m in modules and m != name}
    return edges


def test_does_every_import_point_downward():
    upward = [(a, b) for a, targets in graph().items() for b in targets
              if LAYER[b.split(".")[0]] > LAYER[a.split(".")[0]]]
    assert not upward, f"imports against the layers: {upward}"


def room(module: str) -> str:
    """The front-end subpackage ``module`` belongs to, ``delivery`` for the delivery glue, else ``engine``."""
    for front in FRONT_ENDS + ("delivery",):
        if module == front or module.startswith(front + "."):
            return front
    return "engine" if module.split(".")[0] == "autograder" else module.split(".")[0]


def crossings(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports from the engine into a front end, or from one front end into another."""
    fronts = set(FRONT_ENDS) | {"delivery"}
    return sorted((a, b) for a, targets in edges.items() for b in targets
                  if room(b) in fronts and room(a) != room(b) and room(a) in fronts | {"engine"})


def test_do_the_front_ends_live_in_rooms_the_engine_never_imports():
    edges = graph()
    for front in FRONT_ENDS:  # each is a real subpackage with modules of its own
        assert front in edges, f"{front} is not a package"
    assert not crossings(edges), f"the engine or a front end imports another front end: {crossings(edges)}"
    # nothing of the nbgrader front end is left flat beside the engine
    assert not [m for m in edges if m.startswith("autograder.nbgrader_")]


def test_would_the_rooms_check_see_an_engine_module_importing_a_front_end():
    bad = {"autograder.grading": {"autograder.nbgrader.autograde"}, "autograder.nbgrader.autograde": set(),
           "autograder.examples": {"autograder.nbgrader.validate"}, "delivery.requirements": {"exercises.catalogue"}}
    assert crossings(bad) == [("autograder.examples", "autograder.nbgrader.validate"),
                              ("autograder.grading", "autograder.nbgrader.autograde")]


def test_are_there_no_import_circles():
    edges = graph()
    circles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                circles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    # a package's __init__ re-exporting its own modules is not a circle between modules
    circles = [c for c in circles if not any(m.count(".") == 0 for m in c)]
    assert not circles, f"import circles: {circles}"


def test_does_the_kernel_check_load_neither_the_sandbox_nor_the_runner():
    code = ("import sys, json; import exercises.kernel; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'autograder')))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                       cwd=REPO).stdout)
    assert loaded == [], f"the in-kernel check imported {loaded}"


def test_are_the_cli_and_plugin_options_one_definition():
    parser = argparse.ArgumentParser()
    options.add_cli_options(parser)
    cli = {a.dest for a in parser._actions if a.dest != "help"}

    class Group:
        def __init__(self):
            self.names = set()

        def addoption(self, flag, **kwargs):
            self.names.add(flag.removeprefix("--selfattn-").replace("-", "_"))

    group = Group()
    options.add_plugin_options(group)
    assert cli == group.names == set(options.BY_DEST)
    assert "jobs" in cli  # it once existed in the plugin only


def test_do_a_manifests_options_win_over_the_command_line():
    class Config:
        def getoption(self, name):
            return {"selfattn_call_timeout": 30.0}.get(name)

    values = options.resolve(Config(), {"options": {"call_timeout": 5.0}})
    assert values["call_timeout"] == 5.0 and values["json"] is None
    with pytest.raises(pytest.UsageError, match="unknown grading option"):
        options.resolve(Config(), {"options": {"call_timout": 5.0}})
