"""Do the grader's messages exist in both languages, with the same placeholders, and does each notebook get its own?

The templates are found in the code, not in a hand list: every ``tr(...)`` call of ``exercises/`` and
``autograder/``, read with ``ast`` (its first argument a string, or a module-level string or dict entry
the scanner can resolve). A template without a Chinese entry, an entry nobody uses, placeholders that
differ between the languages, and a registered known mistake without its Chinese text all fail here.
The checkers are plain functions, each shown failing on a made-up catalogue first.
"""

from __future__ import annotations

import ast
import json
import os
import re
import string
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path

import pytest

from exercises import i18n
from exercises.i18n import language, tr

REPO = Path(__file__).resolve().parent.parent
CODE_DIRS = ("exercises", "autograder")
ZH_MESSAGES = REPO / "exercises" / "locale" / "zh" / "messages.json"
ZH_MISTAKES = REPO / "exercises" / "locale" / "zh" / "mistakes"


# --- the scanner -----------------------------------------------------------------------------------------------

def _code_files() -> list[Path]:
    return sorted(p for d in CODE_DIRS for p in (REPO / d).rglob("*.py") if ".venv" not in p.parts)


def _constants(trees: dict[Path, ast.Module]) -> tuple[dict[str, set[str]], dict[str, dict[str, str]]]:
    """Module-level ``NAME = "text"`` and ``NAME = {"key": "text", ...}`` of every scanned file, by name."""
    strings: dict[str, set[str]] = {}
    dicts: dict[str, dict[str, str]] = {}
    for tree in trees.values():
        for node in tree.body:
            target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else \
                node.target if isinstance(node, ast.AnnAssign) else None
            if not isinstance(target, ast.Name) or node.value is None:
                continue
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                strings.setdefault(target.id, set()).add(node.value.value)
            elif isinstance(node.value, ast.Dict):
                entries = {k.value: v.value for k, v in zip(node.value.keys, node.value.values, strict=True)
                           if isinstance(k, ast.Constant) and isinstance(v, ast.Constant) and isinstance(v.value, str)}
                dicts.setdefault(target.id, {}).update(entries)
    return strings, dicts


def _is_tr(call: ast.Call) -> bool:
    return (isinstance(call.func, ast.Name) and call.func.id in ("tr", "N_")) or \
        (isinstance(call.func, ast.Attribute) and call.func.attr in ("tr", "N_"))


def scan_templates(files: dict[Path, str]) -> tuple[dict[str, list[str]], list[str]]:
    """Every template passed to ``tr`` in ``files`` (path -> source): template -> where used; and the calls whose
    template cannot be read statically (each one a failure: a template must be findable)."""
    trees = {path: ast.parse(text, filename=str(path)) for path, text in files.items()}
    strings, dicts = _constants(trees)
    used: dict[str, list[str]] = {}
    unreadable: list[str] = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not _is_tr(node) or not node.args:
                continue
            where = f"{path.name}:{node.lineno}"
            arg = node.args[0]
            found: set[str] = set()
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found = {arg.value}
            elif isinstance(arg, ast.Name) and arg.id in strings:
                found = strings[arg.id]
            elif isinstance(arg, ast.Subscript) and isinstance(arg.value, ast.Name) and arg.value.id in dicts \
                    and isinstance(arg.slice, ast.Constant) and arg.slice.value in dicts[arg.value.id]:
                found = {dicts[arg.value.id][arg.slice.value]}
            if not found:
                unreadable.append(f"{where}: tr({ast.unparse(arg)})")
            for template in found:
                used.setdefault(template, []).append(where)
    return used, unreadable


def code_templates() -> tuple[dict[str, list[str]], list[str]]:
    """The templates of the course's own code."""
    return scan_templates({p: p.read_text(encoding="utf-8") for p in _code_files()})


def zh_catalogue() -> dict[str, str]:
    return json.loads(ZH_MESSAGES.read_text(encoding="utf-8"))


# --- the checkers -----------------------------------------------------------------------------------------------

def fields(template: str) -> Counter:
    """The ``str.format`` fields of a template, with conversion and format spec (``{rtol:g}``: rtol, None, g)."""
    return Counter((name, conv, spec) for _, name, spec, conv in string.Formatter().parse(template)
                   if name is not None)


def missing_entries(used: dict[str, list[str]], catalogue: dict[str, str]) -> list[str]:
    return sorted(f"{t!r} (used at {', '.join(where[:3])})" for t, where in used.items() if t not in catalogue)


def unused_entries(used: dict[str, list[str]], catalogue: dict[str, str]) -> list[str]:
    return sorted(t for t in catalogue if t not in used)


def placeholder_problems(catalogue: dict[str, str]) -> list[str]:
    problems = []
    for english, translated in catalogue.items():
        try:
            if fields(english) != fields(translated):
                problems.append(f"{english!r}: {dict(fields(english))} != {dict(fields(translated))}")
        except ValueError as exc:  # a stray brace: str.format would raise when the message is made
            problems.append(f"{english!r} -> {translated!r}: {exc}")
    return problems


BRACES = re.compile(r"\{[^{}]*\}")


def mistake_text_problems(expected: dict[str, dict[str, tuple[str, str]]],
                          files: dict[str, dict | None]) -> list[str]:
    """Per lesson module: the registered mistakes (``item/name`` -> English diagnosis and hint) against its zh
    file's entries: which are missing (file or entry), which are extra, which lose or change a ``{placeholder}``."""
    problems = []
    for stem, mistakes in sorted(expected.items()):
        data = files.get(stem)
        if data is None:
            if mistakes:
                problems.append(f"{stem}.json is missing, with its {len(mistakes)} entries: "
                                + ", ".join(sorted(mistakes)))
            continue
        for key in sorted(set(mistakes) - set(data)):
            problems.append(f"{stem}.json lacks {key}")
        for key in sorted(set(data) - set(mistakes)):
            problems.append(f"{stem}.json has {key}, which {stem} does not register")
        for key in sorted(set(mistakes) & set(data)):
            entry = data[key]
            if not isinstance(entry, dict) or not all(isinstance(entry.get(f), str) and entry[f].strip()
                                                      for f in ("diagnosis", "hint")):
                problems.append(f"{stem}.json: {key} needs a non-empty diagnosis and hint")
                continue
            for part, english in zip(("diagnosis", "hint"), mistakes[key], strict=True):
                if Counter(BRACES.findall(english)) != Counter(BRACES.findall(entry[part])):
                    problems.append(f"{stem}.json: {key} {part} changes the placeholders {BRACES.findall(english)}")
    return problems


def registered_mistakes() -> dict[str, dict[str, tuple[str, str]]]:
    """Lesson module stem -> the mistakes and error hints registered for its items."""
    from exercises.catalogue import LESSONS
    from exercises.mistakes import ERROR_HINTS, MISTAKES

    result = {}
    for module in LESSONS:
        items = {item.name for item in module.ITEMS}
        result[module.__name__.rsplit(".", 1)[-1]] = {
            f"{m.item}/{m.name}": (m.diagnosis, m.hint) for m in [*MISTAKES, *ERROR_HINTS] if m.item in items}
    return result


# --- the checkers fail on the wrong thing ---------------------------------------------------------------------

SAMPLE = '''
from exercises.i18n import tr
NOTE = "a note about {thing}"
KINDS = {"a": "kind a", "b": "kind b"}
x = tr("expected shape {expected}, got {got}").format(expected=1, got=2)
y = tr(NOTE)
z = tr(KINDS["b"])
w = tr(some_variable)
'''


def test_does_the_scanner_find_literal_constant_and_dict_templates_and_refuse_the_rest():
    used, unreadable = scan_templates({Path("sample.py"): SAMPLE})
    assert set(used) == {"expected shape {expected}, got {got}", "a note about {thing}", "kind b"}
    assert unreadable == ["sample.py:8: tr(some_variable)"]


def test_do_the_checkers_catch_a_missing_an_unused_and_a_mismatched_entry():
    used = {"expected shape {expected}, got {got}": ["a.py:1"], "rtol={rtol:g}": ["a.py:2"]}
    catalogue = {"expected shape {expected}, got {got}": "形状应为 {expected}，实际为 {gots}", "old": "旧"}
    assert missing_entries(used, catalogue) == ["'rtol={rtol:g}' (used at a.py:2)"]
    assert unused_entries(used, catalogue) == ["old"]
    assert len(placeholder_problems(catalogue)) == 1
    assert placeholder_problems({"rtol={rtol:g}": "rtol={rtol}"})  # the format spec is part of the placeholder
    assert placeholder_problems({"a {x}": "甲 {x"})  # a stray brace would raise when the message is made
    assert not placeholder_problems({"expected {a}, got {b}": "实际为 {b}，应为 {a}"})  # order may change


def test_does_the_mistake_check_name_missing_files_entries_extras_and_placeholders():
    expected = {"lesson1_scores": {"softmax_naive/ignores_dim": ("sums over {dim}", "use dim")},
                "lesson2_sdpa": {"scaled_dot_product_attention/no_scaling": ("d", "h")}}
    files = {"lesson1_scores": {"softmax_naive/ignores_dim": {"diagnosis": "对全部求和", "hint": "用 dim"},
                                "softmax_naive/gone": {"diagnosis": "x", "hint": "y"}}}
    problems = mistake_text_problems(expected, files)
    assert any("lesson2_sdpa.json is missing" in p for p in problems)
    assert any("has softmax_naive/gone" in p for p in problems)
    assert any("changes the placeholders" in p for p in problems)
    assert not mistake_text_problems({"lesson1_scores": {"a/b": ("d {x}", "h")}},
                                     {"lesson1_scores": {"a/b": {"diagnosis": "诊断 {x}", "hint": "提示"}}})


# --- the course's catalogues -------------------------------------------------------------------------------------

def test_can_every_template_in_the_code_be_read_statically():
    _, unreadable = code_templates()
    assert not unreadable, f"tr() calls whose template the catalogue check cannot find: {unreadable}"


def test_does_every_template_have_a_chinese_entry():
    used, _ = code_templates()
    assert len(used) > 100  # the scanner sees the engine's messages
    missing = missing_entries(used, zh_catalogue())
    assert not missing, f"{len(missing)} template(s) without a zh entry in {ZH_MESSAGES.name}:\n" + "\n".join(missing)


def test_is_every_chinese_entry_used_by_the_code():
    used, _ = code_templates()
    unused = unused_entries(used, zh_catalogue())
    assert not unused, f"zh entries no code uses (remove them, or the code lost a message): {unused}"


def test_do_the_placeholders_agree_between_the_languages():
    problems = placeholder_problems(zh_catalogue())
    assert not problems, "\n".join(problems)


def test_is_the_chinese_catalogue_chinese():
    cjk = re.compile(r"[\u4e00-\u9fff]")
    catalogue = zh_catalogue()
    # a template of words gets Chinese words; pure punctuation or code (". Or, {also}: ") may stay as it is
    untranslated = [en for en, zh in catalogue.items() if len(re.findall(r"[A-Za-z]{4,}", BRACES.sub("", en))) >= 3
                    and not cjk.search(zh)]
    assert not untranslated, untranslated


def test_does_every_registered_mistake_have_its_chinese_text():
    """One file per lesson module, written by the translators: this names every missing file and entry."""
    files = {}
    for stem in registered_mistakes():
        path = ZH_MISTAKES / f"{stem}.json"
        files[stem] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    problems = mistake_text_problems(registered_mistakes(), files)
    assert not problems, f"{len(problems)} problem(s) with the zh known-mistake texts:\n" + "\n".join(problems)


def test_are_the_workers_english_messages_translated_once_back():
    """``program.py`` raises in English inside the worker; the grader matches the text to its template."""
    import torch

    from exercises import program
    from exercises.worker_messages import PROGRAM_ERRORS

    made = []
    for params in ({"weight": torch.zeros(2, 2), "gone": torch.zeros(2)}, {"weight": torch.zeros(3, 2)}):
        with pytest.raises(program.ProgramError) as info:
            program.load_params(torch.nn.Linear(2, 2, bias=False), params)
        made.append(str(info.value))
    with pytest.raises(program.ProgramError) as info:
        program.run_program([{"op": "call", "fn": "nowhere", "args": [], "out": "r"}], {}, {}, "cpu", None)
    made.append(str(info.value))
    cjk = re.compile(r"[\u4e00-\u9fff]")
    for text in made:
        translated = i18n.translate_made(text, PROGRAM_ERRORS, "zh")
        assert translated != text and cjk.search(translated), text
        assert i18n.translate_made(text, PROGRAM_ERRORS, "en") == text
    assert "['gone']" in i18n.translate_made(made[0], PROGRAM_ERRORS, "zh")  # the values are kept
    assert "`nowhere`" in i18n.translate_made(made[2], PROGRAM_ERRORS, "zh")
    assert i18n.translate_made("a student's own message", PROGRAM_ERRORS, "zh") == "a student's own message"
    from exercises.worker_messages import WORKER_ERRORS

    exit_text = "the code called sys.exit(3); remove it"  # as autograder/worker/main.py words it
    assert "sys.exit(3)" in i18n.translate_made(exit_text, WORKER_ERRORS, "zh") != exit_text
    worker = (REPO / "autograder" / "worker" / "main.py").read_text(encoding="utf-8")
    assert 'f"the code called sys.exit({exc.code!r}); remove it"' in worker  # the template still mirrors it
    from exercises import op_guard

    refused = i18n.translate_made(op_guard.REFUSED, WORKER_ERRORS, "zh")
    assert refused != op_guard.REFUSED and cjk.search(refused)
    guard = (REPO / "exercises" / "op_guard.py").read_text(encoding="utf-8")
    for raised in ('f"{found} is not allowed in this exercise: the data stays in torch tensors"',
                   'f"{event} is not allowed while grading"', '"the grader\'s monitor cannot be changed"'):
        assert raised in guard, raised


# three English words in a row: a sentence left in a Chinese message (code such as ``Tensor.item`` is one word)
ENGLISH_WORDS = re.compile(r"[A-Za-z']+(?: [A-Za-z']+){2,}")


def _monitor_findings() -> tuple[str, str]:
    """A real tampering reason and a real export finding, as the monitor makes them in the worker (in English)."""
    import torch

    from exercises import op_guard

    release = threading.Event()
    other = threading.Thread(target=release.wait, daemon=True)
    other.start()
    try:
        with op_guard.OpGuard() as guard:  # another thread of the code is alive: that is tampering
            pass
    finally:
        release.set()
        other.join()
    tampered = guard.report()["tampered"]
    span = {"n_q": 2, "n_k": 2, "block_q": 1, "block_k": 1, "features": [2]}
    with op_guard.OpGuard(span=span) as guard:  # more numbers read one by one than the tiles need
        values = torch.arange(6.0)
        for _ in range(3):
            [values[i].item() for i in range(6)]
    exported = guard.report()["exported"]
    assert tampered and exported, guard.report()
    return tampered, exported


def test_does_the_monitors_english_reason_come_out_chinese_in_a_chinese_message():
    """The monitor runs in the worker, without a catalogue: its reasons (and its findings' words) come back in
    English, and the grader translates them (``translate_made``) inside the zh message; English keeps them as is."""
    from exercises import op_guard, rules

    cjk = re.compile(r"[\u4e00-\u9fff]")
    tampered, exported = _monitor_findings()
    assert "numbers read out of tensors one by one (Tensor.item)" in exported
    with language("zh"):
        broke = rules.forbidden_message("softmax_stable", ("softmax",), set(), {}, tampered)
        taken = rules.not_tiled_message("flash_attention_forward", None, exported)
    for english, message in ((tampered, broke), (exported, taken)):
        assert english not in message and not ENGLISH_WORDS.search(message), message
        assert cjk.search(message)
    assert "Tensor.item" in taken and exported.split()[0] in taken  # the values are kept (the count, the method)
    with language("en"):
        assert f"({tampered})" in rules.forbidden_message("softmax_stable", ("softmax",), set(), {}, tampered)
        assert f"({exported})" in rules.not_tiled_message("flash_attention_forward", None, exported)
    with language("zh"):  # a method that takes the data out whole is code: it stays as it is
        assert "（Tensor.numpy）" in rules.not_tiled_message("flash_attention_forward", None, "Tensor.numpy")

    reasons = [template.format(name="_pop_torch_function_stack") for template in op_guard.TAMPER_REASONS]
    assert tampered in reasons
    for why in reasons:  # every reason the monitor can give
        with language("zh"):
            message = rules.forbidden_message("softmax_stable", ("softmax",), set(), {}, why)
        assert why not in message and not ENGLISH_WORDS.search(message), message
        assert "_pop_torch_function_stack" in message or "{name}" not in why
    route = op_guard.OPERATOR_ROUTE.format(name="_softmax")  # a built-in seen below the Python API
    with language("zh"):
        seen = rules.forbidden_message("softmax_stable", ("softmax",), set(), {"softmax": route})
    assert route not in seen and "aten._softmax" in seen and not ENGLISH_WORDS.search(seen), seen
    with language("zh"):  # what the answer cell names is translated where it is made; it stays so
        named = rules.shortcut_message("softmax_stable", ("softmax",), [], [], "torch._C.DisableTorchFunction()")
    assert named and "DisableTorchFunction" in named and not ENGLISH_WORDS.search(named), named


def test_does_the_monitor_record_only_its_marked_reasons():
    """Each reason the monitor records is one of its ``N_`` templates (``TAMPER_REASONS``), never a literal of its
    own: a new literal would reach the Chinese edition in English."""
    source = (REPO / "exercises" / "op_guard.py").read_text(encoding="utf-8")
    literals = []
    for node in ast.walk(ast.parse(source)):
        whys = []
        if isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)):
            callee = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            if callee in ("tamper", "_alert") and node.args:
                whys.append(node.args[0])
            elif callee in ("note", "post") and len(node.args) == 3 and isinstance(node.args[1], ast.Constant) \
                    and node.args[1].value == "tampered":
                whys.append(node.args[2])
        elif isinstance(node, ast.FunctionDef) and node.name == "changed":  # the audit hook's reason, returned
            whys += [n.value for n in ast.walk(node) if isinstance(n, ast.Return) and n.value is not None]
        for why in whys:
            if any(isinstance(n, ast.JoinedStr) or (isinstance(n, ast.Constant) and isinstance(n.value, str))
                   for n in ast.walk(why)):
                literals.append(f"op_guard.py:{why.lineno}: {ast.unparse(why)}")
    assert not literals, literals


def test_does_the_validate_summary_say_a_cells_error_in_chinese():
    """nbgrader Validate's summary of a Chinese notebook: a cell that printed to stderr, or failed without a
    message, is said in Chinese; the English edition's words are unchanged."""
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    from autograder.nbgrader import validate as nv

    def graded(grade_id, outputs):
        meta = {"nbgrader": {"grade": True, "solution": False, "locked": True, "grade_id": grade_id, "points": 1,
                             "schema_version": 3}}
        return new_code_cell("check()", metadata=meta, outputs=outputs)

    nb = new_notebook(cells=[graded("test_noisy", [new_output("stream", name="stderr", text="UserWarning: careful\n")]),
                             graded("test_silent", [new_output("error", ename="", evalue="", traceback=[])])])
    en = nv.cell_results(nb)
    assert [r.reason for r in en] == ["printed to stderr: UserWarning: careful", "error"]
    zh = nv.cell_results(nb, "zh")
    assert [r.status for r in zh] == [nv.FAILED, nv.FAILED]
    assert zh[0].reason.endswith("UserWarning: careful") and "printed to stderr" not in zh[0].reason
    summary = nv.summary_text(zh, lang="zh")
    assert "printed to stderr" not in summary and "error" not in summary.replace("UserWarning", ""), summary
    cjk = re.compile(r"[\u4e00-\u9fff]")
    reasons = [line.strip() for line in summary.splitlines()[2:] if line.startswith(" " * 16)]
    assert len(reasons) == 2 and all(cjk.search(line) for line in reasons), summary


def test_does_the_terminal_table_wrap_chinese_in_columns():
    """Chinese has no spaces and each character takes two columns: the table wraps it by columns, whole."""
    from autograder.report import display_width, wrapped

    text = ("- scaled_dot_product_attention[cpu-float64]: " + tr("{passed}/{total} cases passed. ", "zh").format(
        passed=1, total=8) + tr("`{key}` should have shape {expected}, got {got}", "zh").format(
        key="out", expected=(2, 3), got=(3, 2)) * 4 + "x" * 150)
    lines = wrapped(text, 60, "   ", "     ")
    assert len(lines) > 4 and all(display_width(line) <= 60 for line in lines), lines
    assert "".join(line.strip() for line in lines).replace(" ", "") == text.replace(" ", "")
    old = textwrap.wrap(text, 60, initial_indent="   ", subsequent_indent="     ", break_on_hyphens=False)
    assert any(display_width(line) > 60 for line in old)  # counting characters, as before, overflows the terminal
    english = "word " * 40
    assert wrapped(english, 60, "", "") == textwrap.wrap(english, 60, break_on_hyphens=False)  # English as before


# --- choosing the language --------------------------------------------------------------------------------------

def test_is_english_the_identity_and_chinese_the_catalogues():
    template = "`{key}` should have shape {expected}, got {got}"
    assert tr(template, "en") == template
    assert tr(template, "zh") == zh_catalogue()[template] != template
    assert tr("a template nobody wrote", "zh") == "a template nobody wrote"
    with language("zh"):
        assert tr(template) == zh_catalogue()[template]
        assert tr(template, "en") == template  # an explicit language wins
    assert tr(template) == template  # the block ended: English again


def test_does_each_thread_keep_its_own_language():
    template = "`{key}` was not returned"
    seen = {}

    def grade(lang):
        with language(lang):
            threading.Event().wait(0.05)  # overlap with the other thread
            seen[lang] = tr(template)

    threads = [threading.Thread(target=grade, args=(lang,)) for lang in ("en", "zh")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"en": template, "zh": zh_catalogue()[template]}


def test_is_a_notebooks_language_its_edition_else_its_folder():
    zh_meta = {"metadata": {"course": {"edition": "zh"}}, "cells": []}
    assert i18n.student_language(zh_meta, Path("/x/self_attention/01.ipynb")) == "zh"
    assert i18n.student_language({"cells": []}, Path("/x/submitted/s1/self_attention_zh/01.ipynb")) == "zh"
    assert i18n.student_language({"cells": []}, Path("/x/submitted/s1/self_attention/01.ipynb")) == "en"
    en_meta = {"metadata": {"course": {"edition": "en"}}}
    assert i18n.student_language(en_meta, Path("/x/self_attention_zh/01.ipynb")) == "en"  # its own word wins
    for hostile in (None, [], {"metadata": []}, {"metadata": {"course": "zh"}},
                    {"metadata": {"course": {"edition": 7}}}):
        assert i18n.student_language(hostile, None) == "en"


def test_does_a_hostile_notebook_only_lose_its_language(tmp_path):
    """Reading the language must never make a grader fault out of a student's file."""
    from autograder.intake import notebook_language_at

    folder = tmp_path / "s1" / "self_attention_zh"
    folder.mkdir(parents=True)
    for name, content in (("deep.ipynb", b"[" * 200_000), ("binary.ipynb", b"\xff\xfe\x00"),
                          ("list.ipynb", b"[1, 2]"), ("meta.ipynb", b'{"metadata": {"course": {"edition": ["zh"]}}}')):
        (folder / name).write_bytes(content)
        assert notebook_language_at(folder / name) == "zh", name  # its folder still speaks
        (tmp_path / name).write_bytes(content)
        assert notebook_language_at(tmp_path / name) == "en", name
    assert notebook_language_at(None) == "en"
    assert notebook_language_at(tmp_path / "absent.ipynb") == "en"
    from autograder.intake import IntakeError, read_student_notebook

    with pytest.raises(IntakeError, match="not a valid notebook"):  # the student's fault, said so: not a grader fault
        read_student_notebook(tmp_path / "deep.ipynb")


def test_does_the_kernel_check_find_its_notebooks_language(tmp_path, monkeypatch):
    monkeypatch.delenv(i18n.ENV_VAR, raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    folder = tmp_path / "anywhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    assert i18n.kernel_language({}, "02_x.ipynb") == "en"
    (folder / "02_x.ipynb").write_text(json.dumps({"metadata": {"course": {"edition": "zh"}}, "cells": []}))
    assert i18n.kernel_language({}, "02_x.ipynb") == "zh"  # Validate and Lab run the kernel in the notebook's folder
    assert i18n.kernel_language({"__session__": str(folder / "02_x.ipynb")}) == "zh"  # Jupyter Server's session
    monkeypatch.setenv(i18n.ENV_VAR, "en")
    assert i18n.kernel_language({}, "02_x.ipynb") == "en"  # a front end's word wins
    monkeypatch.delenv(i18n.ENV_VAR)
    zh_folder = tmp_path / "self_attention_zh"
    zh_folder.mkdir()
    monkeypatch.chdir(zh_folder)
    assert i18n.kernel_language({}, "02_x.ipynb") == "zh"


def test_does_a_known_mistake_speak_the_current_language(monkeypatch):
    from exercises.mistakes import MISTAKES

    known = MISTAKES[0]
    key = f"{known.item}/{known.name}"
    monkeypatch.setattr(i18n, "mistake_texts",
                        lambda lang: {key: {"diagnosis": "诊断", "hint": "提示"}} if lang == "zh" else {})
    assert known.text == f"{known.diagnosis} ({known.name}). {known.hint}"
    with language("zh"):
        assert known.text == tr("{diagnosis} ({name}). {hint}").format(diagnosis="诊断", name=known.name, hint="提示")
        assert "诊断" in known.text and known.name in known.text


def test_does_the_kernel_check_answer_in_the_notebooks_language(monkeypatch):
    import solutions
    from exercises import kernel

    def wrong(inputs):
        return inputs @ inputs.T + 1.0

    namespace = dict(vars(solutions), attention_scores=wrong)
    failures = {}
    for lang in ("en", "zh"):
        monkeypatch.setenv(i18n.ENV_VAR, lang)
        with pytest.raises(AssertionError) as info:
            kernel.check("attention_scores", namespace, seed=3)
        failures[lang] = str(info.value)
    assert "hidden check(s) failed" in failures["en"]
    assert tr("{name}: {count} hidden check(s) failed (seed {seed}):", "zh").split("{")[0] == "" \
        and "个隐藏检查未通过" in failures["zh"]
    assert "values differ beyond" in failures["en"] and "values differ beyond" not in failures["zh"]


def test_does_lang_force_the_clis_own_lines(tmp_path, capsys):
    from autograder import cli, options

    assert options.BY_DEST["lang"].choices == ("auto", "en", "zh") and options.BY_DEST["lang"].default == "auto"
    missing = tmp_path / "nobody"
    assert cli.main(["grade", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {missing} does not exist"
    assert cli.main(["grade", str(missing), "--lang", "zh"]) == 2
    assert capsys.readouterr().err.strip() == tr("error: {path} does not exist", "zh").format(path=missing) \
        == f"错误：{missing} 不存在"


def test_does_a_submission_table_speak_its_notebooks_language():
    from autograder.grading import NotebookResult, TestOutcome
    from autograder.report import SubmissionReport, table

    row = TestOutcome("softmax_naive", "01_attention_scores.ipynb", "cpu", "float64", "failed", 0.0, 1.0, "x")
    for lang, forced, head in (("zh", None, "分"), ("en", None, "points"), ("zh", "en", "points"),
                               ("en", "zh", "分")):
        sub = SubmissionReport("s1", 1, ["cpu"], "bubblewrap", lang=forced)
        sub.add(NotebookResult("01_attention_scores.ipynb", [row], [], "bubblewrap", 0.1, lang=lang))
        first = table(sub).splitlines()[0]
        assert head in first, (lang, forced, first)
        assert sub.to_json()["warnings"][0] == tr("GPU not exercised: no CUDA device on the grading machine",
                                                  forced or lang)


# --- end to end, through the sandboxed grader --------------------------------------------------------------------

NO_SCALING = '''
import torch


def scaled_dot_product_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights @ v, weights
'''
NB2 = "02_scaled_dot_product_attention.ipynb"


def _grade(paths: list[Path], out: Path, *extra: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", *map(str, paths), "--json", str(out),
                           "--no-canary", "--device", "cpu", "--seed", "11", "--jobs", "1", "-q", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if k != i18n.ENV_VAR})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {Path(s["path"]).name: s for s in json.loads(out.read_text())["submissions"]}


def _rows(submission: dict) -> list[dict]:
    return [t for t in submission["tests"] if t["item"] == "scaled_dot_product_attention" and t["device"] == "cpu"]


@pytest.mark.slow
def test_does_a_wrong_answer_get_its_message_in_its_notebooks_language(tmp_path):
    """A mixed batch: the same wrong answer (no 1/sqrt(d_k)) in an English and a Chinese notebook (about 30 s)."""
    from tests.grader_fixtures import write_submission

    en = write_submission(tmp_path / "batch" / "en_student" / "self_attention", NB2,
                          {"scaled_dot_product_attention": NO_SCALING})
    zh_dir = tmp_path / "batch" / "zh_student" / "self_attention"  # not the zh folder: the metadata decides
    zh = write_submission(zh_dir, NB2, {"scaled_dot_product_attention": NO_SCALING})
    nb = json.loads(zh.read_text())
    nb["metadata"]["course"] = {"edition": "zh"}
    zh.write_text(json.dumps(nb, ensure_ascii=False))
    assert en.exists()

    graded = _grade([tmp_path / "batch"], tmp_path / "auto.json")
    en_rows, zh_rows = _rows(graded["en_student"]), _rows(graded["zh_student"])
    assert [r["score"] for r in en_rows] == [r["score"] for r in zh_rows]  # the same score both ways
    assert all(r["status"] == "failed" for r in en_rows + zh_rows)
    cjk = re.compile(r"[\u4e00-\u9fff]")
    for row in en_rows:
        assert "no_sqrt_dk_scaling" in row["message"] and not cjk.search(row["message"])
        assert "likely mistake" in row["message"]
    from exercises import mistake_bank  # noqa: F401 - registers the lessons' mistakes in this process
    from exercises.mistakes import MISTAKES

    known = next(m for m in MISTAKES if (m.item, m.name) == ("scaled_dot_product_attention", "no_sqrt_dk_scaling"))
    with language("zh"):
        zh_text = known.text
    for row in zh_rows:
        message = row["message"]
        assert cjk.search(message) and "likely mistake" not in message, message
        assert tr(" -- likely mistake: {hint}", "zh").format(hint=zh_text) in message  # the diagnosis, in Chinese
        assert cjk.search(zh_text), f"no Chinese text for {known.item}/{known.name} (exercises/locale/zh/mistakes)"
        assert row["mistakes"] and all(cjk.search(m) for m in row["mistakes"])
    # a notebook the student did not submit speaks the submission's language too
    other = next(t for t in graded["zh_student"]["tests"] if t["notebook"] != NB2)
    assert other["message"] == tr("{notebook} was not found in the submission", "zh").format(notebook=other["notebook"])

    forced = _grade([zh_dir], tmp_path / "en.json", "--lang", "en")
    forced_rows = _rows(next(iter(forced.values())))
    assert [r["message"] for r in forced_rows] == [r["message"] for r in en_rows]  # --lang en: English, word for word
    assert [r["score"] for r in forced_rows] == [r["score"] for r in zh_rows]
