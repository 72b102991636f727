"""Differentiable set-similarity scores without the Q x N x Kq x Kg autograd graph.

The reference's autograd keeps several [Q, N, Kq, Kg] tensors alive for backward; at a
batch of 512 captions against a memory bank of 65k images and K+1 = 5 that is gigabytes.
Here forward is kernels.set_scores (Triton on GPU, blocked on CPU) and keeps only its
inputs; backward recomputes the element cosines block by block and applies

    dS_qn / dc_kl = [k = l = 0] + w/2 (P_kl / Kq + R_kl / Kg)         (smooth Chamfer)
    dS_qn / dc_kl = [k = l = 0] + w/Kq [l = argmax_l' c_kl']           (MaxSim)

(P the softmax over l of alpha c, R the softmax over k), then dq = W g, dg = W^T q for the
block's weights W = dL/dS x dS/dc: two GEMMs, memory bounded by the block (on GPU the
same as two Triton kernels, kernels/grad_triton.py). The trainer's
ASM loss (trainer/losses.py) is computed on these scores, so the whole loss is memory-bounded.
"""
from __future__ import annotations

import torch
from torch import Tensor

from kernels.dispatch import set_scores
from kernels.set_similarity import check_inputs

BLOCK_BYTES = 64 << 20  # the [Qb, Kq, Nb, Kg] cosine and weight blocks of backward


def _score_weights(cos: Tensor, grad: Tensor, alpha: float, weight: float, mode: str) -> Tensor:
    """W [Qb, Kq, Nb, Kg] = dL/dS [Qb, Nb] x dS/dc of a block of cosines [Qb, Kq, Nb, Kg]."""
    kq, kg = cos.shape[1], cos.shape[3]
    if mode == "maxsim":
        w = torch.zeros_like(cos).scatter_(3, cos.argmax(3, keepdim=True), weight / kq)
    else:
        x = alpha * cos
        w = (weight / 2) * (torch.softmax(x, dim=3) / kq + torch.softmax(x, dim=1) / kg)
    w[:, 0, :, 0] += 1.0  # the global term
    return w.mul_(grad[:, None, :, None])


def _backward(q: Tensor, g: Tensor, grad: Tensor, alpha: float, weight: float, mode: str):
    (nq, kq, d), (n, kg) = q.shape, g.shape[:2]
    dq, dg = torch.zeros_like(q), torch.zeros_like(g)
    nb = max(1, BLOCK_BYTES // (max(nq, 1) * kq * kg * q.element_size() * 3))  # cos, x and w alive
    qf = q.reshape(nq * kq, d)
    for n0 in range(0, n, nb):
        gb = g[n0:n0 + nb]
        gf = gb.reshape(-1, d)
        cos = (qf @ gf.T).view(nq, kq, gb.shape[0], kg)
        w = _score_weights(cos, grad[:, n0:n0 + nb], alpha, weight, mode).view(nq * kq, -1)
        dq += (w @ gf).view(nq, kq, d)
        dg[n0:n0 + nb] = (w.T @ qf).view(gb.shape)
    return dq, dg


class _SetScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, g, margin, alpha, weight, mode):
        ctx.save_for_backward(q, g)
        ctx.params = (alpha, weight, mode)
        return set_scores(q, g, alpha=alpha, weight=weight, margin=margin, mode=mode)

    @staticmethod
    def backward(ctx, grad):
        q, g = ctx.saved_tensors
        if q.is_cuda and q.dtype != torch.float64:
            from kernels import grad_triton
            if grad_triton.supports(q, g):
                dq, dg = grad_triton.set_scores_grad(q, g, grad, *ctx.params)
                return dq.to(q.dtype), dg.to(g.dtype), _margin_grad(ctx, grad), None, None, None
        # compute in the scores' precision (fp16/bf16 sets: fp32), return in the inputs' dtypes
        dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        dq, dg = _backward(q.to(dtype), g.to(dtype), grad.to(dtype), *ctx.params)
        return dq.to(q.dtype), dg.to(g.dtype), _margin_grad(ctx, grad), None, None, None


def _margin_grad(ctx, grad: Tensor) -> Tensor | None:
    return -grad.sum(0) if ctx.needs_input_grad[2] else None


def set_scores_with_grad(query_sets: Tensor, gallery_sets: Tensor, alpha: float = 16.0, weight: float = 1.0,
                         margin: Tensor | None = None, mode: str = "chamfer") -> Tensor:
    """set_similarity_reference's value and gradients, memory bounded: scores [Q, N]."""
    check_inputs(query_sets, gallery_sets, alpha, margin, mode)
    return _SetScores.apply(query_sets, gallery_sets.to(query_sets.dtype), margin, alpha, weight, mode)
