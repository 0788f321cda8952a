"""The course's language editions: one master notebook per lesson, prose in two languages.

The master is ``source/self_attention/NN_*.ipynb`` (English prose). An edition in another language is
the master with some cells' text replaced, read from a translation file ``i18n/<lang>/NN_*.md``:

    <!-- cell: <cell id> en: <first 12 hex digits of sha256(master cell source)> -->
    ...the cell's whole source in the edition's language...
    <!-- glossary after: <cell id> -->
    ...a markdown cell that only this edition has (the lesson's glossary), put after that cell...

A marker is one whole line; a block runs to the next marker (blank lines at its two ends are
dropped). Cells the file does not name keep the master's source. The rules that keep an edition in
sync with its master (``build_edition`` raises ``EditionError`` naming the cell otherwise):

- every named cell exists in the master, and its ``en:`` hash is the master cell's current one: a
  master cell that changed after it was translated is *stale*, and the build says which;
- a code cell may differ from the master only in string literals and comments: the two syntax trees
  are equal once every string constant is blanked (an f-string keeps its ``{expressions}`` and
  their format specs), and the nbgrader region markers (``### BEGIN SOLUTION`` ...) are the same lines
  in the same order; the hidden-test regions are byte for byte the master's;
- nbgrader metadata, cell ids, cell types and the order of cells are the master's.

stdlib only, so the grader and the tests can use it without a Jupyter stack.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MASTER_ASSIGNMENT = "self_attention"
LANGUAGES = ("en", "zh")  # the master's language first
I18N_DIR = REPO / "i18n"

_MARKER = re.compile(r"^<!-- (?:(cell): (\S+) en: ([0-9a-f]{12})|(glossary) after: (\S+)) -->$")
_REGION = re.compile(r"^\s*### (BEGIN|END) (SOLUTION|HIDDEN TESTS)\s*$")
_HIDDEN = re.compile(r"^\s*### BEGIN HIDDEN TESTS\s*$(.*?)^\s*### END HIDDEN TESTS\s*$", re.M | re.S)


class EditionError(ValueError):
    """A translation that does not fit its master (missing cell, stale hash, changed code)."""


def assignment_for(lang: str) -> str:
    """The nbgrader assignment of an edition: ``self_attention`` and ``self_attention_zh``."""
    return MASTER_ASSIGNMENT if lang == "en" else f"{MASTER_ASSIGNMENT}_{lang}"


def source_hash(source: str) -> str:
    """The ``en:`` hash of a master cell: the first 12 hex digits of sha256 of its source."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:12]


def _text(source) -> str:
    return "".join(source) if isinstance(source, list) else source


@dataclass
class Translation:
    """One lesson's translation file, parsed: cell id -> (en hash, text); glossary cells by anchor."""

    path: Path
    cells: dict[str, tuple[str, str]] = field(default_factory=dict)
    glossaries: dict[str, str] = field(default_factory=dict)


def parse_translation(path: Path) -> Translation:
    """Read ``i18n/<lang>/NN_*.md``; ``EditionError`` for a cell named twice or text before a marker."""
    result = Translation(path)
    current: tuple[str, str, str] | None = None  # (kind, id, hash)
    lines: list[str] = []

    def flush() -> None:
        if current is None:
            if "".join(lines).strip():
                raise EditionError(f"{path.name}: text before the first marker")
            return
        text = "\n".join(lines).strip("\n")
        kind, cell_id, digest = current
        if kind == "cell":
            if cell_id in result.cells:
                raise EditionError(f"{path.name}: cell {cell_id} is translated twice")
            result.cells[cell_id] = (digest, text)
        else:
            if cell_id in result.glossaries:
                raise EditionError(f"{path.name}: two glossaries after cell {cell_id}")
            result.glossaries[cell_id] = text

    for line in path.read_text(encoding="utf-8").splitlines():
        match = _MARKER.match(line)
        if match:
            flush()
            lines = []
            current = (("cell", match[2], match[3]) if match[1] else ("glossary", match[5], ""))
        else:
            lines.append(line)
    flush()
    return result


class _BlankStrings(ast.NodeTransformer):
    """Blank every string constant; an f-string keeps only its interpolated expressions."""

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if isinstance(node.value, str):
            return ast.copy_location(ast.Constant(value=""), node)
        return node

    def visit_FormattedValue(self, node: ast.FormattedValue) -> ast.AST:
        # the expression is code; the format spec (``:.4f``) stays as written: it decides how a number prints
        node.value = self.visit(node.value)
        return node

    def visit_JoinedStr(self, node: ast.JoinedStr) -> ast.AST:
        values = [self.visit(v) for v in node.values if isinstance(v, ast.FormattedValue)]
        return ast.copy_location(ast.JoinedStr(values=values), node)


def code_shape(source: str) -> str:
    """A code cell's syntax tree with strings blanked (comments are not in the tree): what must match."""
    tree = ast.parse(source)
    return ast.dump(_BlankStrings().visit(tree), annotate_fields=False, include_attributes=False)


def check_code_cell(cell_id: str, master: str, translated: str) -> None:
    """``EditionError`` unless ``translated`` is ``master`` with only strings and comments changed."""
    try:
        same = code_shape(master) == code_shape(translated)
    except SyntaxError as error:
        raise EditionError(f"code cell {cell_id}: the translation does not parse ({error})") from None
    if not same:
        raise EditionError(f"code cell {cell_id}: the translation changes the code, not only strings and comments")
    regions = [[line.strip() for line in text.splitlines() if _REGION.match(line)] for text in (master, translated)]
    if regions[0] != regions[1]:
        raise EditionError(f"code cell {cell_id}: the nbgrader region markers differ from the master's")
    if _HIDDEN.findall(master) != _HIDDEN.findall(translated):
        raise EditionError(f"code cell {cell_id}: the hidden tests must be the master's, byte for byte")


def build_edition(master_nb: dict, translation: Translation, lang: str) -> dict:
    """The edition of one notebook: the master with the translation's cells and glossaries applied."""
    nb = copy.deepcopy(master_nb)
    by_id = {cell.get("id"): cell for cell in nb["cells"]}
    for cell_id, (digest, text) in translation.cells.items():
        cell = by_id.get(cell_id)
        if cell is None:
            raise EditionError(f"{translation.path.name}: cell {cell_id} is not in the master")
        master_text = _text(cell["source"])
        if source_hash(master_text) != digest:
            raise EditionError(f"{translation.path.name}: cell {cell_id} changed in the master after it was "
                               f"translated (stale; its hash is now {source_hash(master_text)})")
        if cell["cell_type"] == "code":
            check_code_cell(cell_id, master_text, text)
        cell["source"] = text
    cells = []
    for cell in nb["cells"]:
        cells.append(cell)
        glossary = translation.glossaries.get(cell.get("id"))
        if glossary is not None:
            cells.append({"cell_type": "markdown", "id": f"glossary-{lang}", "metadata": {}, "source": glossary})
    missing = set(translation.glossaries) - set(by_id)
    if missing:
        raise EditionError(f"{translation.path.name}: glossary after unknown cell(s) {sorted(missing)}")
    nb["cells"] = cells
    nb.setdefault("metadata", {})["course"] = {"edition": lang}
    return nb


def translation_path(lang: str, notebook_name: str) -> Path:
    """``i18n/<lang>/<notebook stem>.md``."""
    return I18N_DIR / lang / (Path(notebook_name).stem + ".md")


def notebook_language(nb: dict, default: str = "en") -> str:
    """The edition a notebook says it belongs to (``metadata.course.edition``), else ``default``."""
    meta = nb.get("metadata") if isinstance(nb, dict) else None
    course = meta.get("course") if isinstance(meta, dict) else None
    lang = course.get("edition") if isinstance(course, dict) else None
    return lang if lang in LANGUAGES else default


def skeleton(master_nb: dict, notebook_name: str) -> str:
    """A translation file to start from: every markdown cell, and every code cell with a string or a
    comment, with its marker and the master's text to be replaced."""
    blocks = [f"<!-- glossary after: {master_nb['cells'][0].get('id')} -->\n| English | 中文 |\n| --- | --- |\n"]
    for cell in master_nb["cells"]:
        text = _text(cell["source"])
        if cell["cell_type"] == "code" and not re.search(r"[\"'#]", text):
            continue
        blocks.append(f"<!-- cell: {cell.get('id')} en: {source_hash(text)} -->\n{text}\n")
    return "\n".join(blocks)


def load_notebook(path: Path) -> dict:
    """A notebook as plain JSON."""
    return json.loads(path.read_text(encoding="utf-8"))
