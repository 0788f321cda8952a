"""How deep the suite's soaks go: more seeds and more answers find rarer false failures, and cost time.

The default depth fits the whole suite in its 20-minute budget on two cores. ``SELFATTN_SOAK=full``
runs each soak at the depth it passed at when it was last checked whole (the numbers beside each use),
for a change to tolerances, the judge, the needed-cells rules or the worker:

    SELFATTN_SOAK=full bash run.sh test tests/test_seed_soak.py tests/test_needed_cells.py
"""

from __future__ import annotations

import os

_VALUE = os.environ.get("SELFATTN_SOAK", "")
if _VALUE not in ("", "full"):
    raise RuntimeError(f"SELFATTN_SOAK={_VALUE!r}: leave it unset (the suite's depth) or set it to 'full'")
FULL = _VALUE == "full"


def depth(default: int, full: int) -> int:
    """``full`` under ``SELFATTN_SOAK=full``, else ``default``."""
    return full if FULL else default
