"""The catalogue of graded items: every lesson's items, in course order, by name.

One definition serves both graders: ``exercises.kernel.check`` (nbgrader's hidden tests, in the
student's kernel) and the pytest autograder (in an isolated worker). Each lesson module in
``exercises/lessons/`` defines its items and how to build their cases on fresh random inputs, from the
pieces in ``exercises.cases``; this module is the one list of lessons. Points are not here: they come
from the nbgrader metadata in ``source/``. Importing it imports every lesson, which registers their
known mistakes.
"""

from __future__ import annotations

from exercises.cases import FLOAT_DTYPES, Case, Item, available_devices
from exercises.lessons import (
    lesson1_scores,
    lesson2_sdpa,
    lesson3_trainable,
    lesson4_causal,
    lesson5_multihead,
    lesson6_positions,
    lesson7_language_model,
    lesson8_inference,
    lesson9_flash_forward,
    lesson10_flash_backward,
)

__all__ = ["FLOAT_DTYPES", "ITEMS", "LESSONS", "NOTEBOOKS", "Case", "Item", "available_devices", "items_in"]

LESSONS = (lesson1_scores, lesson2_sdpa, lesson3_trainable, lesson4_causal, lesson5_multihead, lesson6_positions,
           lesson7_language_model, lesson8_inference, lesson9_flash_forward, lesson10_flash_backward)

ITEMS: dict[str, Item] = {item.name: item for module in LESSONS for item in module.ITEMS}

NOTEBOOKS: tuple[str, ...] = tuple(module.NOTEBOOK for module in LESSONS)


def items_in(notebook: str) -> list[Item]:
    """The graded items of one notebook, in catalogue order."""
    return [item for item in ITEMS.values() if item.notebook == notebook]
