"""Lesson 6 reference: positional information (sinusoidal encoding, rotary position embedding).

Both use the frequencies ``theta_i = base ** (-2i / d)`` for the feature pairs ``(2i, 2i + 1)``,
``i = 0 .. d/2 - 1``, and interleave the pairs as in *Attention Is All You Need* and the RoFormer
paper. Angles ``p * theta_i`` are computed in float64 whatever the output dtype, so that large
positions keep float32 accuracy.
"""

from __future__ import annotations

import torch


def _frequencies(d: int, base: float, device) -> torch.Tensor:
    """``theta_i = base ** (-2i / d)`` for ``i = 0 .. d/2 - 1``, in float64: shape ``(d/2,)``."""
    two_i = torch.arange(0, d, 2, dtype=torch.float64, device=device)  # (d/2,): 0, 2, 4, ...
    return torch.pow(torch.tensor(float(base), dtype=torch.float64, device=device), -two_i / d)


def sinusoidal_positional_encoding(num_positions, d_model, base=10000.0, device=None, dtype=torch.float32):
    """The sinusoidal position table of *Attention Is All You Need*.

    Returns a ``(num_positions, d_model)`` tensor of ``dtype`` on ``device`` with
    ``PE[p, 2i] = sin(p * theta_i)`` and ``PE[p, 2i + 1] = cos(p * theta_i)``,
    ``theta_i = base ** (-2i / d_model)``, for positions ``p = 0 .. num_positions - 1``
    (sine and cosine interleaved). The angles are computed in float64, then cast to ``dtype``.
    Raises ``ValueError`` when ``d_model`` is odd.
    """
    if d_model % 2 != 0:
        raise ValueError(f"d_model must be even (sine and cosine come in pairs), got {d_model}")
    positions = torch.arange(num_positions, dtype=torch.float64, device=device)  # (n,)
    theta = _frequencies(d_model, base, device)  # (d/2,)
    angles = positions[:, None] * theta[None, :]  # (n, d/2): p * theta_i
    pe = torch.stack((angles.sin(), angles.cos()), dim=-1)  # (n, d/2, 2): (sin, cos) per pair
    return pe.reshape(num_positions, d_model).to(dtype)  # (n, d): sin, cos, sin, cos, ...


def apply_rope(x, positions=None, base=10000.0):
    """Rotary position embedding (RoFormer), on interleaved feature pairs.

    ``x``: ``(..., n, d)`` with even ``d``. The pair ``(x[2i], x[2i + 1])`` of the token at position
    ``p`` is rotated by the angle ``p * theta_i``, ``theta_i = base ** (-2i / d)``:
    ``(x[2i] cos - x[2i + 1] sin, x[2i] sin + x[2i + 1] cos)``.
    ``positions``: ``None`` for ``0 .. n - 1``, or an integer tensor broadcastable to ``(..., n)``.
    Returns a tensor of the shape, dtype and device of ``x``; half-precision inputs are rotated in
    float32 and cast back. Then ``apply_rope(q, m) . apply_rope(k, n)`` depends only on ``m - n``.
    Raises ``ValueError`` when ``d`` is odd.
    """
    n, d = x.shape[-2], x.shape[-1]
    if d % 2 != 0:
        raise ValueError(f"the feature size must be even (features are rotated in pairs), got {d}")
    if positions is None:
        positions = torch.arange(n, device=x.device)  # (n,)
    positions = torch.as_tensor(positions, device=x.device)
    positions = torch.broadcast_to(positions, x.shape[:-1])  # (..., n)
    compute = torch.promote_types(x.dtype, torch.float32)  # float32 for half precision, else x's dtype
    theta = _frequencies(d, base, x.device)  # (d/2,)
    angles = positions.to(torch.float64)[..., None] * theta  # (..., n, d/2)
    cos, sin = angles.cos().to(compute), angles.sin().to(compute)  # (..., n, d/2)
    pairs = x.to(compute).unflatten(-1, (d // 2, 2))  # (..., n, d/2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]  # (..., n, d/2) each
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)  # (..., n, d/2, 2)
    return rotated.flatten(-2).to(x.dtype)  # (..., n, d)
