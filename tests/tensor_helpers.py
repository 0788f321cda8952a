"""Helpers shared by the tests of the reference solutions: devices and seeded tensors."""

from __future__ import annotations

import pytest
import torch

needs_cuda = pytest.mark.needs_cuda
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


def randn(gen, *shape, dtype=torch.float64, device="cpu", scale=1.0):
    """Seeded normal tensor, drawn on the CPU so every device sees the same values."""
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
