"""The grader's messages in the student's language: gettext-style catalogues, one per language.

A message is written once, in English, as a ``str.format`` template, and looked up at the point it is
made: ``tr("expected shape {expected}, got {got}").format(expected=..., got=...)``. A catalogue,
``exercises/locale/<lang>/messages.json``, maps each English template to its translation (same
``{placeholders}``); English is the identity. A template the catalogue lacks stays English (the suite's
``tests/test_messages_i18n.py`` fails on it, so that never ships).

Which language: ``tr(template, lang)`` with ``lang`` given, else the *current* language, a context
variable that the grader sets per notebook (``with language("zh"): ...`` around the grading of a Chinese
edition's notebook): the engine's message sites need not pass a language down through every call, and
two notebooks graded at once in two threads each keep their own (a thread starts with the default,
English).

Known mistakes' texts (``exercises.mistakes``) come from ``exercises/locale/<lang>/mistakes/<lesson module
stem>.json``: ``{"<item>/<mistake name>": {"diagnosis": ..., "hint": ...}}``.

stdlib only: ``exercises.kernel`` (in the student's kernel) and the worker's side may use it.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import string
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from exercises.editions import notebook_language

LANGUAGES = ("en", "zh")  # the templates' language first
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
ZH_ASSIGNMENT = "self_attention_zh"  # the Chinese edition's nbgrader assignment (exercises.editions.assignment_for)
ENV_VAR = "SELFATTN_LANG"  # the kernel check's language where a front end sets it (nbgrader Validate, autograde)

_current: contextvars.ContextVar[str] = contextvars.ContextVar("selfattn_language", default="en")


def normalise(lang: str | None) -> str:
    """``lang`` if it is a language of the course, else English (``zh-CN``, ``zh_TW.UTF-8`` -> ``zh``)."""
    if not isinstance(lang, str):
        return "en"
    short = lang.strip().lower().replace("_", "-").split("-")[0].split(".")[0]
    return short if short in LANGUAGES else "en"


def current_language() -> str:
    """The language the messages made now are in (the notebook being graded's)."""
    return _current.get()


@contextlib.contextmanager
def language(lang: str | None) -> Iterator[str]:
    """Make ``lang`` the current language inside the ``with`` block (this thread and context only)."""
    token = _current.set(normalise(lang))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


@cache
def catalogue(lang: str) -> dict[str, str]:
    """``exercises/locale/<lang>/messages.json``: English template -> translated template (empty for English)."""
    if lang == "en":
        return {}
    path = LOCALE_DIR / lang / "messages.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # no catalogue: English (a grader in a broken installation still speaks)
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def tr(template: str, lang: str | None = None) -> str:
    """``template`` translated into ``lang`` (default: the current language); English, or unknown, as is."""
    lang = normalise(lang) if lang is not None else _current.get()
    if lang == "en":
        return template
    return catalogue(lang).get(template, template)


@cache
def mistake_texts(lang: str) -> dict[str, dict[str, str]]:
    """Every ``exercises/locale/<lang>/mistakes/*.json`` merged: ``"<item>/<name>"`` -> diagnosis and hint.

    Item names are unique over the course, so the files need not be told apart here (the suite checks that
    each lesson's file holds exactly its module's mistakes).
    """
    merged: dict[str, dict[str, str]] = {}
    folder = LOCALE_DIR / lang / "mistakes"
    for path in sorted(folder.glob("*.json")) if lang != "en" else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for key, entry in data.items() if isinstance(data, dict) else ():
            texts = entry if isinstance(entry, dict) else {}
            if isinstance(texts.get("diagnosis"), str) and isinstance(texts.get("hint"), str):
                merged[key] = {"diagnosis": entry["diagnosis"], "hint": entry["hint"]}
    return merged


def mistake_text(item: str, name: str, diagnosis: str, hint: str, lang: str | None = None) -> tuple[str, str]:
    """A known mistake's (diagnosis, hint) in ``lang`` (default: current); the English ones where none is written."""
    lang = normalise(lang) if lang is not None else _current.get()
    entry = mistake_texts(lang).get(f"{item}/{name}") if lang != "en" else None
    return (entry["diagnosis"], entry["hint"]) if entry else (diagnosis, hint)


def path_language(path: str | os.PathLike | None) -> str | None:
    """``zh`` for a path inside a folder named after the Chinese edition's assignment, else None."""
    if path is None:
        return None
    return "zh" if ZH_ASSIGNMENT in Path(path).parts else None


def student_language(nb: object, path: str | os.PathLike | None = None) -> str:
    """A student's notebook's language: its edition (``exercises.editions.notebook_language``: the
    ``metadata.course.edition``), else ``zh`` under a ``self_attention_zh`` folder, else English.
    ``nb`` is the student's JSON: any shape at all."""
    return notebook_language(nb if isinstance(nb, dict) else {}, default=path_language(path) or "en")


def _language_of_file(path: Path) -> str | None:
    """The language of the notebook file at ``path``, None where there is no readable notebook."""
    try:
        if path.is_file() and path.stat().st_size <= 8 << 20:
            return student_language(json.loads(path.read_bytes()), path)
    except Exception:  # noqa: BLE001 - a file that cannot say its language (deep nesting: RecursionError) says none
        return None
    return None


def kernel_language(namespace: dict | None = None, notebook: str | None = None) -> str:
    """The language ``exercises.kernel.check`` speaks inside the student's kernel, which cannot see the notebook's
    metadata itself. In order:

    1. ``SELFATTN_LANG`` (``en``/``zh``), where a front end or the instructor sets it;
    2. the notebook the kernel runs, by ipykernel's ``__session__`` (its path, set by Jupyter Server in the
       kernel's namespace; also ``JPY_SESSION_NAME``): its edition, else its folder;
    3. ``notebook`` (the item's notebook file name, the same in both editions) in the working directory, which
       is the notebook's folder under JupyterLab, nbgrader Validate and ``nbgrader autograde``: its edition;
    4. the working directory inside a ``self_attention_zh`` folder; else English.
    """
    forced = os.environ.get(ENV_VAR)
    if forced:
        return normalise(forced)
    session = (namespace or {}).get("__session__") or os.environ.get("JPY_SESSION_NAME")
    if isinstance(session, str) and session.endswith(".ipynb"):
        for candidate in (Path(session), Path.cwd() / Path(session).name):
            found = _language_of_file(candidate)
            if found:
                return found
        if path_language(session):
            return "zh"
    if notebook:
        found = _language_of_file(Path.cwd() / notebook)
        if found:
            return found
    return path_language(Path.cwd()) or "en"


def N_(template: str) -> str:
    """Mark ``template`` as a message made elsewhere in English (in the worker, which has no catalogue), for the
    catalogue and its test; returns it unchanged. ``translate_made`` translates such a message once it is back."""
    return template


@cache
def _pattern(template: str) -> re.Pattern:
    """A regex that matches what ``template.format(...)`` made, one named group per placeholder."""
    parts, seen = [], set()
    for literal, name, _spec, _conv in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name is not None:
            parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>.*?)")
            seen.add(name)
    return re.compile("".join(parts), re.S)


def translate_made(text: str, templates: tuple[str, ...], lang: str | None = None) -> str:
    """``text``, an English message made from one of ``templates`` (where no catalogue was at hand), in ``lang``
    (default: current): the first template it matches whole, translated, with the same values; else as it is."""
    lang = normalise(lang) if lang is not None else _current.get()
    if lang == "en":
        return text
    for template in templates:
        found = _pattern(template).fullmatch(text)
        translated = catalogue(lang).get(template, template)
        if found and translated != template:
            try:
                return translated.format(**found.groupdict())
            except (KeyError, IndexError, ValueError):
                return text
    return text
