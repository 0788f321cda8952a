"""What the lessons' known mistakes share: an attention core with one knob per mistake, and more.

Each mistake's variant is the reference with one thing done wrong, written compactly on top of
``solutions`` (small knobs on this shared core rather than copies). Also here: the dropout predicates of
lessons 4 and 5, the error patterns and mistakes that two lessons register alike.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from exercises.cases import DROPOUT_P
from exercises.compare import Outputs
from exercises.mistakes import error_hint, mistake
from exercises.tolerances import tolerance

NEG_INF = float("-inf")


# --- a shared attention core with one knob per mistake ------------------------------------------------


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None = None, *, fill: float = NEG_INF,
                   invert: bool = False, after: bool = False, dim: int = -1) -> torch.Tensor:
    """Softmax of ``scores`` with ``mask`` (True = may attend), done right unless a knob says otherwise.

    ``fill``: the value masked scores get; ``invert``: mask where True; ``after``: zero the weights after
    the softmax instead (no renormalisation); ``dim``: the softmax dimension.
    """
    if mask is not None and not after:
        scores = scores.masked_fill(mask if invert else ~mask, fill)
    weights = torch.softmax(scores, dim=dim)
    if mask is not None and after:
        weights = weights * mask
    return weights


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, *,
           scale: float | None = None, swap: bool = False, transpose_weights: bool = False,
           dropout: Any = None, **softmax_knobs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(output, weights)`` of scaled dot-product attention, with knobs for the classic mistakes.

    ``scale``: what the scores are divided by (default ``sqrt(d_k)``); ``swap``: scores ``k q^T``
    (queries and keys swapped); ``transpose_weights``: ``weights^T @ v``; ``dropout``: applied to the weights.
    """
    if swap:
        q, k = k, q
    scores = (q @ k.transpose(-2, -1)) / (k.shape[-1] ** 0.5 if scale is None else scale)
    weights = masked_softmax(scores, mask, **softmax_knobs)
    if dropout is not None:
        weights = dropout(weights)
    return (weights.transpose(-2, -1) if transpose_weights else weights) @ v, weights


def scale_for(how: Any, x: torch.Tensor, module: Any) -> float | None:
    """A module variant's scale: None (right), a number, or ``d_in`` / ``d_out`` / ``head_dim_from_d_in``."""
    if how == "d_in":
        return x.shape[-1] ** 0.5
    if how == "d_out":
        return module.d_out ** 0.5
    if how == "head_dim_from_d_in":
        return (x.shape[-1] // module.num_heads) ** 0.5
    return how


def causal_mask_of(module: Any, n: int, how: str) -> torch.Tensor | None:
    """The causal mask a module variant uses: ``cut`` to ``n`` tokens (right), ``diagonal_hidden`` or ``none``."""
    if how == "none":
        return None
    mask = module.mask[:n, :n]
    return mask.tril(-1) if how == "diagonal_hidden" else mask


def weights_dropout(module: Any, mode: str):
    """The dropout on the weights: ``right`` (the module's), ``always`` (even in eval mode) or ``never``.

    Any other mode (``output``, ``context``) puts the dropout somewhere else, so the weights get none.
    """
    if mode == "always":
        return lambda w: F.dropout(w, module.dropout.p, training=True)
    return module.dropout if mode == "right" else None


# --- what two lessons register alike ------------------------------------------------------------------------

# the error text of loading parameters whose names end in ``.bias`` into layers without a bias (lessons 3 and 5)
QKV_BIAS_NOT_USED = r"missing \[[^\]]*\.bias'"
# the error text of a (context_length, context_length) mask applied to a shorter sequence (lessons 4 and 5)
MASK_NOT_CUT = (r"size of tensor a \(\d+\) must match the size of tensor b \(\d+\)|"
                r"doesn't match the broadcast shape")


def mask_not_cut_to_sequence_length(item: str) -> None:
    """Register, for ``item`` (a module with a ``mask`` buffer), the error of a mask not cut to the sequence."""
    error_hint(item, "mask_not_cut_to_sequence_length", MASK_NOT_CUT,
               "the (context_length, context_length) mask is used whole, so a sequence shorter than "
               "context_length cannot be masked (shape mismatch)",
               "cut it to the sequence length: self.mask[:num_tokens, :num_tokens]")


def dropout_never_applied(item: str):
    """Decorator: register, for ``item`` (a module with dropout), a variant whose dropout layer is never used."""
    return mistake(item, "dropout_never_applied",
                   "the dropout layer is created but never applied, so train() mode gives the same output every time",
                   "in forward: attn_weights = self.dropout(attn_weights), after the softmax")


# --- dropout in the wrong place, recognised from the train() outputs (lessons 4 and 5) -----------------------


def dropped_entrywise(runs: list[torch.Tensor], base: torch.Tensor, zero_tol: float, kept_tol: torch.Tensor) -> bool:
    """Every entry of every run is 0 or ``base / (1 - p)`` (entrywise dropout of ``base``), and some row
    holds both a dropped and a kept entry (which dropout of the attention weights never gives)."""
    scale = 1 / (1 - DROPOUT_P)
    mixed = False
    for run in runs:
        zero = run.abs() <= zero_tol
        kept = (run - scale * base).abs() <= kept_tol
        if not bool((zero | kept).all()):
            return False
        mixed = mixed or bool(((zero & ~kept).any(-1) & (kept & ~zero).any(-1)).any())
    return mixed


def train_runs(student: Outputs, reference: Outputs) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
    """The right eval() output and the student's two train() outputs of the dropout case, in float64."""
    ev, ref_ev = student.tensor("eval_out"), reference.tensor("eval_out")
    runs = [student.tensor("train_a"), student.tensor("train_b")]
    if ev is None or ref_ev is None or any(t is None or t.shape != ref_ev.shape for t in (ev, *runs)):
        return None
    if ev.dtype != ref_ev.dtype or not torch.allclose(ev, ref_ev, *tolerance(ref_ev.dtype)):
        return None
    return ref_ev.double(), [t.double() for t in runs]


def dropout_on_output(student: Outputs, reference: Outputs) -> bool:
    """The train() outputs are the eval() output with single entries zeroed and the rest scaled by 1/(1-p)."""
    found = train_runs(student, reference)
    if found is None:
        return False
    base, runs = found
    rtol, atol = tolerance(reference.tensors["eval_out"].dtype)
    return dropped_entrywise(runs, base, 0.0, 2 * (atol + rtol * base.abs()) / (1 - DROPOUT_P))
