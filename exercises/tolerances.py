"""One per-dtype tolerance table for every value comparison in the course."""

from __future__ import annotations

import torch

# (rtol, atol). float64 leaves room for a different but valid order of operations (einsum, scaling
# the queries first, a loop over heads); float32 for the same over a few reductions; bfloat16 keeps
# 8 bits of mantissa, so a few units in the last place after a softmax and a matrix product.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-9),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (3e-2, 3e-2),
}


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """Return ``(rtol, atol)`` for ``dtype``; exact (0, 0) for integer and boolean tensors."""
    return TOLERANCES.get(dtype, (0.0, 0.0))
