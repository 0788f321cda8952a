"""Lesson 10: efficient attention II: FlashAttention's backward pass by recomputation, and its autograd Function."""

from __future__ import annotations

import math

import torch

from .lesson9_flash_forward import _accumulation_dtype, _check_blocks, flash_attention_forward


def flash_attention_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    grad_out: torch.Tensor, causal: bool = False, block_q: int = 64, block_k: int = 64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of attention with respect to ``q, k, v`` (FlashAttention's backward pass, by recomputation).

    Nothing of size ``n_q * n_k`` was stored by the forward pass: each tile of attention weights is
    recomputed from the scores and ``lse``, ``P = exp(S - lse)``. With ``D_i = sum_c dO_ic O_ic``
    (``= sum_j P_ij dP_ij``), the softmax's backward is ``dS = P * (dP - D)`` where ``dP = dO V^T``.
    Then ``dV += P^T dO``, ``dQ += dS K / sqrt(d)`` and ``dK += dS^T Q / sqrt(d)``, one tile at a time:
    the outer loop runs over key tiles, the inner one over query tiles.

    Args:
        q, k, v: the forward pass's inputs; out, lse: its outputs (``flash_attention_forward``);
        grad_out: ``(..., n_q, d_v)``, the gradient of the loss with respect to ``out``.
        causal, block_q, block_k: as in the forward pass.

    Returns:
        ``(grad_q, grad_k, grad_v)`` with the shapes and dtypes of ``q, k, v`` (summed over broadcast
        batch dimensions). Queries that see no key (``lse = -inf``) contribute nothing.
    """
    _check_blocks(block_q, block_k)
    n_q, d = q.shape[-2:]
    n_k = k.shape[-2]
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    acc_dtype = _accumulation_dtype(q.dtype)
    scale = 1.0 / math.sqrt(d)
    lse = lse.to(acc_dtype)
    lse = torch.where(lse == float("-inf"), torch.full_like(lse, float("inf")), lse)  # no key: P = exp(-inf) = 0
    grad_out = grad_out.to(acc_dtype)
    D = (grad_out * out.to(acc_dtype)).sum(dim=-1)  # (..., n_q), rowsum(dO * O)
    dq = torch.zeros((*batch, n_q, d), dtype=acc_dtype, device=q.device)
    dk = torch.zeros((*batch, n_k, d), dtype=acc_dtype, device=q.device)
    dv = torch.zeros((*batch, n_k, v.shape[-1]), dtype=acc_dtype, device=q.device)

    for ks in range(0, n_k, block_k):
        ke = min(ks + block_k, n_k)
        k_tile = k[..., ks:ke, :].to(acc_dtype)  # (..., Bk, d)
        v_tile = v[..., ks:ke, :].to(acc_dtype)  # (..., Bk, d_v)
        dk_tile = torch.zeros((*batch, ke - ks, d), dtype=acc_dtype, device=q.device)
        dv_tile = torch.zeros((*batch, ke - ks, v.shape[-1]), dtype=acc_dtype, device=q.device)
        key_pos = torch.arange(ks, ke, device=q.device)[None, :]  # (1, Bk)
        q_start = (ks // block_q) * block_q if causal else 0  # causal: earlier query tiles see none of these keys
        for qs in range(q_start, n_q, block_q):
            qe = min(qs + block_q, n_q)
            q_tile = q[..., qs:qe, :].to(acc_dtype)  # (..., Bq, d)
            s = (q_tile @ k_tile.transpose(-2, -1)) * scale  # (..., Bq, Bk)
            if causal and ke - 1 > qs:
                query_pos = torch.arange(qs, qe, device=q.device)[:, None]  # (Bq, 1)
                s = s.masked_fill(key_pos > query_pos, float("-inf"))
            p = torch.exp(s - lse[..., qs:qe, None])  # (..., Bq, Bk): the weights, recomputed
            do_tile = grad_out[..., qs:qe, :]  # (..., Bq, d_v)
            dv_tile += p.transpose(-2, -1) @ do_tile
            dp = do_tile @ v_tile.transpose(-2, -1)  # (..., Bq, Bk)
            ds = p * (dp - D[..., qs:qe, None])  # (..., Bq, Bk), the softmax's backward
            dq[..., qs:qe, :] += (ds @ k_tile) * scale
            dk_tile += (ds.transpose(-2, -1) @ q_tile) * scale
        dk[..., ks:ke, :] = dk_tile
        dv[..., ks:ke, :] = dv_tile

    return (dq.sum_to_size(q.shape).to(q.dtype), dk.sum_to_size(k.shape).to(k.dtype),
            dv.sum_to_size(v.shape).to(v.dtype))


class FlashAttentionFunction(torch.autograd.Function):
    """Attention as one autograd node: saves only ``q, k, v, out, lse`` (``O(n d)`` memory), recomputes the rest.

    ``FlashAttentionFunction.apply(q, k, v, causal=False, block_q=64, block_k=64)`` returns ``out``.
    """

    @staticmethod
    def forward(ctx, q, k, v, causal=False, block_q=64, block_k=64):
        """Runs ``flash_attention_forward``; saves ``q, k, v, out, lse`` and the settings; returns ``out``."""
        out, lse = flash_attention_forward(q, k, v, causal, block_q, block_k)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.block_q, ctx.block_k = causal, block_q, block_k
        return out

    @staticmethod
    def backward(ctx, grad_out):
        """Runs ``flash_attention_backward`` on what ``forward`` saved; no gradient for the settings."""
        q, k, v, out, lse = ctx.saved_tensors
        grad_q, grad_k, grad_v = flash_attention_backward(q, k, v, out, lse, grad_out, ctx.causal, ctx.block_q,
                                                          ctx.block_k)
        return grad_q, grad_k, grad_v, None, None, None


def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, block_q: int = 64, block_k: int = 64
) -> torch.Tensor:
    """Exact, differentiable attention in ``O(n d)`` memory: ``FlashAttentionFunction.apply(...)``."""
    return FlashAttentionFunction.apply(q, k, v, causal, block_q, block_k)
