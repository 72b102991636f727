"""Backward of the set-similarity scores as OpenAI Triton kernels (kernels/scores_autograd.py).

Given dL/dS [Q, N], the set gradients are dq = sum_n W_qn g_n and dg = sum_q W_qn^T q_q
with W_qn = dL/dS_qn x dS_qn/dc [Kq, Kg] (formulas in scores_autograd.py). Two kernels, so
that neither needs atomics: one program per query block walks every gallery tile and
accumulates dq; one program per gallery tile walks every query block and accumulates dg.
Each recomputes the tile's cosines with `tl.dot` over the whole (padded) D, forms W in
registers and multiplies it back with a second `tl.dot`; nothing of size Q x N x Kq x Kg
is ever stored. Rows are loaded whole, so D is limited to MAX_D (larger: torch blocks).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.search_triton import LOG2E

MAX_D = 1024


@triton.jit
def _weights(g2, q2, grad_ptr, offs_q, offs_n, Q, N, Kq, Kg, alpha_log2, weight,
             MAXSIM: tl.constexpr, IEEE: tl.constexpr, BQ: tl.constexpr, BN: tl.constexpr,
             KQP: tl.constexpr, KGP: tl.constexpr):
    """W [BN*KGP, BQ*KQP] (rows: gallery elements, columns: query elements) of one tile pair."""
    if IEEE:
        cos = tl.dot(g2, tl.trans(q2), input_precision="ieee")
    else:
        cos = tl.dot(g2, tl.trans(q2))
    cos = tl.reshape(cos, (BN, KGP, BQ, KQP))
    kj = tl.arange(0, KGP)[None, :, None, None]
    ki = tl.arange(0, KQP)[None, None, None, :]
    valid = (kj < Kg) & (ki < Kq)
    if MAXSIM:
        best = tl.argmax(tl.where(valid, cos, float("-inf")), axis=1)  # [BN, BQ, KQP]
        dsdc = tl.where(kj == best[:, None, :, :], weight / Kq, 0.0)
    else:
        x = tl.where(valid, cos * alpha_log2, -1e30)
        p = tl.exp2(x - tl.max(x, axis=1)[:, None, :, :])  # softmax over gallery elements
        p = p / tl.sum(p, axis=1)[:, None, :, :]
        r = tl.exp2(x - tl.max(x, axis=3)[:, :, :, None])  # softmax over query elements
        r = r / tl.sum(r, axis=3)[:, :, :, None]
        dsdc = (weight / 2) * (p / Kq + r / Kg)
    dsdc = tl.where(valid, dsdc + tl.where((kj == 0) & (ki == 0), 1.0, 0.0), 0.0)
    ok = (offs_n[:, None] < N) & (offs_q[None, :] < Q)
    grad = tl.load(grad_ptr + offs_q[None, :].to(tl.int64) * N + offs_n[:, None], mask=ok, other=0.0)  # [BN, BQ]
    return tl.reshape(dsdc * grad[:, None, :, None], (BN * KGP, BQ * KQP))


@triton.jit
def _load_sets(ptr, offs, count, K, stride_item, stride_row, D, KP: tl.constexpr, DP: tl.constexpr):
    """Rows [len(offs) * KP, DP] of sets, zero where the item, row or column does not exist."""
    rows = tl.arange(0, KP)
    d = tl.arange(0, DP)
    # cast before multiplying: item * stride passes 2**31 at 1M x 5 x 512
    ptrs = ptr + offs[:, None, None].to(tl.int64) * stride_item + rows[None, :, None] * stride_row + d[None, None, :]
    mask = (offs[:, None, None] < count) & (rows[None, :, None] < K) & (d[None, None, :] < D)
    x = tl.load(ptrs, mask=mask, other=0.0)
    return tl.reshape(x, (offs.shape[0] * KP, DP))


@triton.jit
def dq_kernel(q_ptr, g_ptr, grad_ptr, out_ptr, Q, N, D, Kq, Kg, stride_qq, stride_qk, stride_gn, stride_gk,
               alpha_log2, weight, MAXSIM: tl.constexpr, IEEE: tl.constexpr, BQ: tl.constexpr,
               BN: tl.constexpr, KQP: tl.constexpr, KGP: tl.constexpr, DP: tl.constexpr):
    offs_q = tl.program_id(0) * BQ + tl.arange(0, BQ)
    q2 = _load_sets(q_ptr, offs_q, Q, Kq, stride_qq, stride_qk, D, KQP, DP)
    acc = tl.zeros((BQ * KQP, DP), dtype=tl.float32)
    for n0 in range(0, N, BN):
        offs_n = n0 + tl.arange(0, BN)
        g2 = _load_sets(g_ptr, offs_n, N, Kg, stride_gn, stride_gk, D, KGP, DP)
        w = _weights(g2, q2, grad_ptr, offs_q, offs_n, Q, N, Kq, Kg, alpha_log2, weight,
                     MAXSIM, IEEE, BQ, BN, KQP, KGP).to(g2.dtype)
        if IEEE:
            acc = tl.dot(tl.trans(w), g2, acc, input_precision="ieee")
        else:
            acc = tl.dot(tl.trans(w), g2, acc)
    _store_sets(out_ptr, acc, offs_q, Q, Kq, D, KQP, DP)


@triton.jit
def dg_kernel(q_ptr, g_ptr, grad_ptr, out_ptr, Q, N, D, Kq, Kg, stride_qq, stride_qk, stride_gn, stride_gk,
               alpha_log2, weight, MAXSIM: tl.constexpr, IEEE: tl.constexpr, BQ: tl.constexpr,
               BN: tl.constexpr, KQP: tl.constexpr, KGP: tl.constexpr, DP: tl.constexpr):
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    g2 = _load_sets(g_ptr, offs_n, N, Kg, stride_gn, stride_gk, D, KGP, DP)
    acc = tl.zeros((BN * KGP, DP), dtype=tl.float32)
    for q0 in range(0, Q, BQ):
        offs_q = q0 + tl.arange(0, BQ)
        q2 = _load_sets(q_ptr, offs_q, Q, Kq, stride_qq, stride_qk, D, KQP, DP)
        w = _weights(g2, q2, grad_ptr, offs_q, offs_n, Q, N, Kq, Kg, alpha_log2, weight,
                     MAXSIM, IEEE, BQ, BN, KQP, KGP).to(q2.dtype)
        if IEEE:
            acc = tl.dot(w, q2, acc, input_precision="ieee")
        else:
            acc = tl.dot(w, q2, acc)
    _store_sets(out_ptr, acc, offs_n, N, Kg, D, KGP, DP)


@triton.jit
def _store_sets(ptr, acc, offs, count, K, D, KP: tl.constexpr, DP: tl.constexpr):
    """Store rows [len(offs) * KP, DP] into a contiguous [count, K, D] tensor."""
    x = tl.reshape(acc, (offs.shape[0], KP, DP))
    rows = tl.arange(0, KP)
    d = tl.arange(0, DP)
    ptrs = ptr + (offs[:, None, None].to(tl.int64) * K + rows[None, :, None]) * D + d[None, None, :]
    mask = (offs[:, None, None] < count) & (rows[None, :, None] < K) & (d[None, None, :] < D)
    tl.store(ptrs, x, mask=mask)


def supports(q: Tensor, g: Tensor) -> bool:
    return q.shape[-1] <= MAX_D and q.dtype in (torch.float32, torch.float16, torch.bfloat16)


def set_scores_grad(q: Tensor, g: Tensor, grad: Tensor, alpha: float, weight: float,
                    mode: str) -> tuple[Tensor, Tensor]:
    """(dq float32 [Q, Kq, D], dg float32 [N, Kg, D]) of the scores' gradient grad [Q, N]."""
    q, g = q.contiguous(), g.to(q.dtype).contiguous()
    grad = grad.float().contiguous()
    (nq, kq, d), (n, kg) = q.shape, g.shape[:2]
    dq = torch.zeros(nq, kq, d, dtype=torch.float32, device=q.device)
    dg = torch.zeros(n, kg, d, dtype=torch.float32, device=q.device)
    if nq == 0 or n == 0:
        return dq, dg
    meta = launch_meta(nq, kq, kg, d, q.dtype, mode)
    kw = dict(q_ptr=q, g_ptr=g, grad_ptr=grad, Q=nq, N=n, D=d, Kq=kq, Kg=kg, stride_qq=q.stride(0), stride_qk=q.stride(1),
              stride_gn=g.stride(0), stride_gk=g.stride(1), alpha_log2=alpha * LOG2E, weight=float(weight), **meta)
    dq_kernel[(triton.cdiv(nq, meta["BQ"]),)](out_ptr=dq, **kw)
    dg_kernel[(triton.cdiv(n, meta["BN"]),)](out_ptr=dg, **kw)
    return dq, dg


def launch_meta(nq: int, kq: int, kg: int, d: int, dtype: torch.dtype, mode: str) -> dict:
    """Constexprs and launch options of both kernels (shared with the compile gate)."""
    kqp, kgp = triton.next_power_of_2(kq), triton.next_power_of_2(kg)
    # tl.dot's 16-wide minimum, rows held whole; triton's default warps and stages
    return dict(MAXSIM=mode == "maxsim", IEEE=dtype == torch.float32, BQ=max(1, 16 // kqp), BN=max(1, 16 // kgp),
                KQP=kqp, KGP=kgp, DP=max(16, triton.next_power_of_2(d)), num_warps=4, num_stages=3)
