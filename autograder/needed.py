"""Which given cells the graded code needs: the lesson's demos, plots and trainings are not run.

Answer cells always run. A given cell runs when the graded code may depend on it: it defines a
name that an answer cell, a graded call or another running cell uses; or it may change something
those use (assigns into it, calls a method of it, passes it to a function, changes a library's
global settings); or it cannot be read statically (``exec``, ``globals()``, a star import). What is
left out only draws, prints and times things, on objects of its own. Each call re-seeds the random
generators, so a demo's ``torch.manual_seed`` is not a dependency.

The facts about a cell are computed once per cell text (the given cells come from ``source/``) and
the choice per submission (its answer cells use names of their own). ``tests/test_needed_cells.py``
grades the examples and every fixture both ways and checks that the scores are the same.
"""

from __future__ import annotations

import ast
import functools
import symtable
from dataclasses import dataclass

from autograder.runner import CellSpec

OPAQUE_CALLS = frozenset({"exec", "eval", "compile", "setattr", "delattr", "__import__", "importlib"})
NAMESPACES = frozenset({"globals", "locals", "vars"})  # reading them is fine; writing through them is opaque
NAMESPACE_READS = frozenset({"get", "keys", "items", "values", "copy", "__contains__"})
# calls that read their arguments and change nothing the graded code sees
PURE_CALLS = frozenset({"print", "display", "len", "type", "isinstance", "repr", "str", "format", "round",
                        "show_heatmap", "human", "range", "enumerate", "zip", "list", "tuple", "sorted", "min",
                        "max", "sum", "abs", "float", "int", "bool", "dict", "set", "id", "hasattr", "getattr"})
PURE_ROOTS = frozenset({"plt", "matplotlib", "math", "time", "statistics"})  # drawing, arithmetic, clocks
# module functions that change process-wide state the graded calls could see (re-seeding excepted, and
# printing and thread counts: a grade may not depend on the number of threads anyway)
STATE_SETTERS = ("set_", "use_", "enable_", "disable_")
HARMLESS_SETTERS = frozenset({"set_printoptions", "set_num_threads", "set_num_interop_threads"})
RESEEDING = frozenset({"manual_seed", "seed"})


@dataclass(frozen=True)
class CellFacts:
    """What one cell's code does with names, as far as the graded code is concerned."""

    defines: frozenset[str]
    uses: frozenset[str]
    modules: frozenset[str]  # names it binds by import
    touches: frozenset[str]  # outside names it may change: assigned into, a method called, passed to a call
    setters: frozenset[str]  # names whose ``set_*``/``use_*``/... it calls: a module's process-wide settings
    opaque: bool  # cannot be read statically: always run


def _root(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


@functools.lru_cache(maxsize=1024)
def cell_facts(code: str) -> CellFacts:
    """The names ``code`` defines at top level, uses anywhere, imports, and may change."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return CellFacts(frozenset(), frozenset(), frozenset(), frozenset(), frozenset(), True)
    defines, uses, modules, touches, setters, opaque = set(), set(), set(), set(), set(), False
    top_level = _top_level_stores(tree)
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defines.add(stmt.name)
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            for alias in stmt.names:
                if alias.name == "*":
                    opaque = True
                name = alias.asname or alias.name.split(".")[0]
                defines.add(name)
                modules.add(name)
    uses = _global_uses(code)
    for node in _runs_now(tree):
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Store) and node in top_level:
                defines.add(node.id)
            if isinstance(node.ctx, ast.Del):
                touches.add(node.id)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            opaque = True
        elif isinstance(node, (ast.Attribute, ast.Subscript)) and isinstance(node.ctx, (ast.Store, ast.Del)):
            touches.add(_root(node) or "")
            opaque |= _root(node) in NAMESPACES
        elif isinstance(node, ast.AugAssign):
            touches.add(_root(node.target) or "")
        elif isinstance(node, ast.Call):
            opaque |= _root(node.func) in OPAQUE_CALLS
            touches |= _call_touches(node)
            if isinstance(node.func, ast.Attribute):
                attr = node.func.attr
                if attr.startswith(STATE_SETTERS) and attr not in HARMLESS_SETTERS:
                    setters.add(_root(node.func) or "")
                opaque |= _root(node.func) in NAMESPACES and attr not in NAMESPACE_READS
    touches.discard("")
    return CellFacts(frozenset(defines), frozenset(uses), frozenset(modules), frozenset(touches),
                     frozenset(setters), opaque)


def _runs_now(tree: ast.Module):
    """Every node of the code that runs when the cell runs: function and lambda bodies run only when called
    (and a function that graded code calls is a needed definition, so its cell runs anyway)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            # a keyword-only parameter without a default (``def f(q, *, tile)``) has None in kw_defaults
            stack += [*node.decorator_list, *node.args.defaults,
                      *(default for default in node.args.kw_defaults if default is not None)]
            continue
        if isinstance(node, ast.Lambda):
            continue
        stack += [child for child in ast.iter_child_nodes(node) if child is not None]


def _global_uses(code: str) -> set[str]:
    """Names the code reads from the notebook's namespace: at top level, or as globals of its functions."""
    uses: set[str] = set()

    def visit(table: symtable.SymbolTable) -> None:
        for symbol in table.get_symbols():
            if symbol.is_referenced() and (table.get_type() == "module" or symbol.is_global()):
                uses.add(symbol.get_name())
        for child in table.get_children():
            visit(child)

    visit(symtable.symtable(code, "<cell>", "exec"))
    return uses


def _top_level_stores(tree: ast.Module) -> set[ast.Name]:
    found: set[ast.Name] = set()
    scoped = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.ListComp, ast.SetComp,
              ast.DictComp, ast.GeneratorExp)

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, scoped):
                continue
            if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                found.add(child)
            visit(child)

    visit(tree)
    return found


def _call_touches(call: ast.Call) -> set[str]:
    """Outside names a call may change: a method's owner, and every name passed to it."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    root = _root(func)
    if name in PURE_CALLS or root in PURE_ROOTS or name in RESEEDING:
        return set()
    touched: set[str] = set()
    if isinstance(func, ast.Attribute) and root is not None:
        touched.add(root)  # a method may change its object; for a module, see ``needed_cells``
    for arg in [*call.args, *(k.value for k in call.keywords)]:
        arg = arg.value if isinstance(arg, ast.Starred) else arg
        if isinstance(arg, (ast.Name, ast.Attribute, ast.Subscript)):  # an object passed on (a call's result is new)
            arg_root = _root(arg)
            if arg_root is not None:
                touched.add(arg_root)
    return touched


def needed_cells(cells: list[CellSpec], roots: set[str]) -> list[bool]:
    """Per cell, whether it runs: every answer cell, and the given cells the graded code may depend on.

    ``roots``: the names the graded calls reach in the notebook's namespace (their programs' names).
    """
    facts = [cell_facts(cell.source) for cell in cells]
    modules = frozenset().union(*(f.modules for f in facts))
    objects = frozenset().union(*(f.defines for f in facts)) - modules  # what the cells made (not builtins)
    keep = [cell.kind != "given" or f.opaque for cell, f in zip(cells, facts, strict=True)]
    needed = set(roots).union(*(f.uses for f, k in zip(facts, keep, strict=True) if k))
    changed = True
    while changed:
        changed = False
        for index, f in enumerate(facts):
            if keep[index]:
                continue
            outside = (f.touches - f.defines) & needed
            objects_touched = outside & objects  # a module passed around or called is not changed by it
            if (f.defines & needed) or objects_touched or (f.setters & modules):  # settings reach all code
                keep[index] = changed = True
                needed |= f.uses
    return keep


def program_names(programs: list[list[dict]]) -> set[str]:
    """The names the call programs look up in the notebook's namespace (``exercises/program.py``:
    the ``fn`` of ``call``/``raises`` steps and the ``cls`` of ``new`` steps, by their first part)."""
    names = set()
    for program in programs:
        results = {step.get("out") for step in program}  # values the program made itself (``m.forward``)
        names |= {str(step[key]).split(".")[0] for step in program for key in ("fn", "cls") if key in step}
        names -= results
    return names
