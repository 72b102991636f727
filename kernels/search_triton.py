"""Set similarity and top-k search as one OpenAI Triton kernel (the GPU path).

Each program scores a block of BQ queries against tiles of BN gallery items and never
writes the Q x N x Kq x Kg cosines anywhere: the set rows are padded to powers of two
(KQP, KGP), one `tl.dot` of the flattened tiles [BN*KGP, BD] x [BD, BQ*KQP] accumulates
the element cosines in fp32 over D, and the smooth Chamfer (or MaxSim) reductions, the
global term and the margin run in registers. Then either
  - dense: the [BQ, BN] scores are stored (evaluation ranks every item), or
  - top-k: each program walks a strided share of the tiles keeping its KP best (score,
    index) keys (kernels/topk.py packing) in registers, merged tile by tile with tl.topk;
    the host merges the few per-program lists with one torch top-k.
Nothing of size Q x N exists in device memory in the top-k mode.

Exactness: keys order ties by the lower gallery index, as the reference's stable ranking.
fp32 galleries use IEEE fp32 dot products (no TF32) so scores match the reference to fp32
rounding; fp16/bf16 galleries multiply in their dtype with fp32 accumulation.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels import topk

LOG2E = 1.4426950408889634
SHARED_SHIFT_MAX_ALPHA = 40.0  # as in search_cpu: unit-norm cosines span 2, exp2 stays normal
MAX_TOPK_PER_TILE = 64  # larger k: dense scores in gallery chunks, merged on the host


ACC_BUDGET = 16384  # fp32 cosines held per program ([BN*KGP, BQ*KQP]): ~64 registers a thread at 8 warps
CONFIGS = [triton.Config({"BN": bn, "BD": bd}, num_warps=w, num_stages=st)
           for bn, bd, w, st in ((16, 64, 4, 3), (32, 64, 4, 3), (64, 64, 4, 3), (64, 128, 8, 3),
                                 (128, 64, 8, 3), (256, 64, 8, 2))]


def _prune(configs, named_args, **meta):
    """Tiles that fit the register budget and hold the tile's top-k (tl.topk needs KP <= BN).
    The interpreter (CI, no GPU) cannot time configs: it runs the smallest valid tile."""
    cols, kgp, kp = meta["BQ"] * meta["KQP"], meta["KGP"], meta.get("KP", 1)
    valid = [c for c in configs if c.kwargs["BN"] >= max(kp, 16 // kgp)]
    fitting = [c for c in valid if c.kwargs["BN"] * kgp * cols <= ACC_BUDGET] or valid[:1]
    return fitting[:1] if os.environ.get("TRITON_INTERPRET") == "1" else fitting


@triton.jit
def _set_scores_tile(q_ptr, g_ptr, margin_ptr, pid_q, pid_n, Q, N, D, Kq, Kg,
                     stride_qq, stride_qk, stride_gn, stride_gk, alpha_log2, weight,
                     HAS_MARGIN: tl.constexpr, MAXSIM: tl.constexpr, SHARED_SHIFT: tl.constexpr,
                     IEEE: tl.constexpr, BQ: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
                     KQP: tl.constexpr, KGP: tl.constexpr):
    """Scores [BQ, BN] of one query block against one gallery tile (invalid rows: -inf)."""
    offs_q = pid_q * BQ + tl.arange(0, BQ)
    offs_n = pid_n * BN + tl.arange(0, BN)
    ki = tl.arange(0, KQP)
    kj = tl.arange(0, KGP)
    offs_d = tl.arange(0, BD)
    q_rows = (offs_q[:, None] * stride_qq + ki[None, :] * stride_qk).to(tl.int64)
    g_rows = (offs_n[:, None] * stride_gn + kj[None, :] * stride_gk).to(tl.int64)
    q_ok = (offs_q[:, None] < Q) & (ki[None, :] < Kq)
    g_ok = (offs_n[:, None] < N) & (kj[None, :] < Kg)
    acc = tl.zeros((BN * KGP, BQ * KQP), dtype=tl.float32)
    for d0 in range(0, D, BD):
        d = d0 + offs_d
        d_ok = d[None, None, :] < D
        g = tl.load(g_ptr + g_rows[:, :, None] + d[None, None, :], mask=g_ok[:, :, None] & d_ok, other=0.0)
        q = tl.load(q_ptr + q_rows[:, :, None] + d[None, None, :], mask=q_ok[:, :, None] & d_ok, other=0.0)
        g2 = tl.reshape(g, (BN * KGP, BD))
        q2 = tl.reshape(q, (BQ * KQP, BD))
        if IEEE:
            acc = tl.dot(g2, tl.trans(q2), acc, input_precision="ieee")
        else:
            acc = tl.dot(g2, tl.trans(q2), acc)
    cos = tl.reshape(acc, (BN, KGP, BQ, KQP))
    j4 = kj[None, :, None, None]
    i4 = ki[None, None, None, :]
    valid = (j4 < Kg) & (i4 < Kq)
    glob = tl.sum(tl.sum(tl.where((j4 == 0) & (i4 == 0), cos, 0.0), axis=3), axis=1)  # [BN, BQ]
    if MAXSIM:
        best = tl.max(tl.where(valid, cos, float("-inf")), axis=1)  # [BN, BQ, KQP]
        set_term = tl.sum(tl.where(ki[None, None, :] < Kq, best, 0.0), axis=2) / Kq
    else:
        # log2 domain (exp2 is one instruction); padding gets a finite floor, not -inf, so an
        # all-padding row reduces to a finite value (masked below) instead of inf - inf = nan
        x = tl.where(valid, cos * alpha_log2, -1e30)
        if SHARED_SHIFT:
            m = tl.max(tl.max(x, axis=3), axis=1)  # [BN, BQ]
            e = tl.exp2(x - m[:, None, :, None])
            a2b = tl.log2(tl.sum(e, axis=1)) + m[:, :, None]  # [BN, BQ, KQP]
            b2a = tl.log2(tl.sum(e, axis=3)) + m[:, None, :]  # [BN, KGP, BQ]
        else:
            ma = tl.max(x, axis=1)
            a2b = tl.log2(tl.sum(tl.exp2(x - ma[:, None, :, :]), axis=1)) + ma
            mb = tl.max(x, axis=3)
            b2a = tl.log2(tl.sum(tl.exp2(x - mb[:, :, :, None]), axis=3)) + mb
        a2b = tl.sum(tl.where(ki[None, None, :] < Kq, a2b, 0.0), axis=2) / Kq
        b2a = tl.sum(tl.where(kj[None, :, None] < Kg, b2a, 0.0), axis=1) / Kg
        set_term = (a2b + b2a) / (2.0 * alpha_log2)  # log2-domain / (alpha log2 e) = natural / alpha
    score = glob + weight * set_term
    if HAS_MARGIN:
        score -= tl.load(margin_ptr + offs_n, mask=offs_n < N, other=0.0)[:, None]
    score = tl.trans(score)  # [BQ, BN]
    ok = (offs_q[:, None] < Q) & (offs_n[None, :] < N)
    return tl.where(ok, score, float("-inf")), offs_q, offs_n, ok


@triton.autotune(configs=CONFIGS, key=["D", "KQP", "KGP", "BQ", "MAXSIM", "IEEE"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _dense_kernel(q_ptr, g_ptr, margin_ptr, out_ptr, Q, N, D, Kq, Kg,
                  stride_qq, stride_qk, stride_gn, stride_gk, alpha_log2, weight,
                  HAS_MARGIN: tl.constexpr, MAXSIM: tl.constexpr, SHARED_SHIFT: tl.constexpr,
                  IEEE: tl.constexpr, BQ: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
                  KQP: tl.constexpr, KGP: tl.constexpr):
    score, offs_q, offs_n, ok = _set_scores_tile(
        q_ptr, g_ptr, margin_ptr, tl.program_id(0), tl.program_id(1), Q, N, D, Kq, Kg,
        stride_qq, stride_qk, stride_gn, stride_gk, alpha_log2, weight,
        HAS_MARGIN, MAXSIM, SHARED_SHIFT, IEEE, BQ, BN, BD, KQP, KGP)
    tl.store(out_ptr + offs_q[:, None].to(tl.int64) * N + offs_n[None, :], score, mask=ok)


@triton.autotune(configs=CONFIGS, key=["D", "KQP", "KGP", "BQ", "MAXSIM", "IEEE", "KP"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _topk_kernel(q_ptr, g_ptr, margin_ptr, cand_ptr, Q, N, D, Kq, Kg,
                 stride_qq, stride_qk, stride_gn, stride_gk, alpha_log2, weight, SPLITS,
                 HAS_MARGIN: tl.constexpr, MAXSIM: tl.constexpr, SHARED_SHIFT: tl.constexpr,
                 IEEE: tl.constexpr, BQ: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
                 KQP: tl.constexpr, KGP: tl.constexpr, KP: tl.constexpr):
    """Program (query block, split) walks gallery tiles split, split + SPLITS, ... keeping its
    running top-KP keys in registers, and writes them to cand[q, split * KP : (split + 1) * KP]."""
    pid_q = tl.program_id(0)
    split = tl.program_id(1)
    best = tl.full((BQ, KP), -9223372036854775808, dtype=tl.int64)
    for tile in range(split, tl.cdiv(N, BN), SPLITS):
        score, offs_q, offs_n, ok = _set_scores_tile(
            q_ptr, g_ptr, margin_ptr, pid_q, tile, Q, N, D, Kq, Kg,
            stride_qq, stride_qk, stride_gn, stride_gk, alpha_log2, weight,
            HAS_MARGIN, MAXSIM, SHARED_SHIFT, IEEE, BQ, BN, BD, KQP, KGP)
        # the kernels/topk.py key: order-preserving score bits high, 2**32 - 1 - index low
        score = tl.where(score == 0.0, 0.0, score)
        bits = score.to(tl.int32, bitcast=True)
        ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
        low = (4294967295 - offs_n.to(tl.int64))[None, :]
        keys = tl.where(ok, (ordered.to(tl.int64) << 32) + low, -9223372036854775808)
        both = tl.reshape(tl.join(best, tl.topk(keys, KP)), (BQ, 2 * KP))
        best = tl.topk(both, KP)
    offs_q = pid_q * BQ + tl.arange(0, BQ)
    slots = split * KP + tl.arange(0, KP)
    tl.store(cand_ptr + offs_q[:, None].to(tl.int64) * (SPLITS * KP) + slots[None, :], best,
             mask=offs_q[:, None] < Q)


def _launch_args(q: Tensor, g: Tensor, alpha: float, weight: float, margin: Tensor | None, mode: str):
    kq, kg = q.shape[1], g.shape[1]
    kqp, kgp = triton.next_power_of_2(kq), triton.next_power_of_2(kg)
    # tl.dot needs >= 16 columns; with many queries, more per program reuse each gallery tile
    bq = max(1, (64 if q.shape[0] >= 32 else 16) // kqp)
    args = (q, g, margin if margin is not None else g, *([q.shape[0], g.shape[0], g.shape[2], kq, kg]),
            q.stride(0), q.stride(1), g.stride(0), g.stride(1), alpha * LOG2E, float(weight))
    meta = dict(HAS_MARGIN=margin is not None, MAXSIM=mode == "maxsim",
                SHARED_SHIFT=alpha <= SHARED_SHIFT_MAX_ALPHA, IEEE=g.dtype == torch.float32,
                BQ=bq, KQP=kqp, KGP=kgp)
    return args, meta


def _prepare(q: Tensor, g: Tensor, margin: Tensor | None):
    g = g.contiguous()
    q = q.to(g.dtype).contiguous()  # tl.dot multiplies in one dtype
    return q, g, None if margin is None else margin.float().contiguous()


def scores(q: Tensor, g: Tensor, alpha: float, weight: float, margin: Tensor | None, mode: str) -> Tensor:
    """Dense scores [Q, N] float32 on the tensors' device."""
    q, g, margin = _prepare(q, g, margin)
    out = torch.empty(q.shape[0], g.shape[0], dtype=torch.float32, device=g.device)
    if out.numel():
        args, meta = _launch_args(q, g, alpha, weight, margin, mode)
        grid = lambda m: (triton.cdiv(q.shape[0], m["BQ"]), triton.cdiv(g.shape[0], m["BN"]))  # noqa: E731
        _dense_kernel[grid](*args[:3], out, *args[3:], **meta)
    return out


def search(q: Tensor, g: Tensor, k: int, alpha: float, weight: float, margin: Tensor | None,
           mode: str) -> tuple[Tensor, Tensor]:
    """Top-k (scores [Q, k'], indices [Q, k']), k' = min(k, N)."""
    q, g, margin = _prepare(q, g, margin)
    nq, n = q.shape[0], g.shape[0]
    k = min(k, n)
    if nq == 0 or k == 0:
        return torch.empty(nq, k, device=g.device), torch.empty(nq, k, dtype=torch.int64, device=g.device)
    if k > MAX_TOPK_PER_TILE:
        return _search_chunked(q, g, k, alpha, weight, margin, mode)
    kp = triton.next_power_of_2(k)
    args, meta = _launch_args(q, g, alpha, weight, margin, mode)
    q_blocks = triton.cdiv(nq, meta["BQ"])
    # enough programs to fill the GPU (each walks several tiles); few under the interpreter
    programs = 4 * torch.cuda.get_device_properties(g.device).multi_processor_count if g.is_cuda else 4
    splits = max(1, min(programs // q_blocks, triton.cdiv(n, 16)))
    cand = torch.empty((nq, splits * kp), dtype=torch.int64, device=g.device)
    _topk_kernel[(q_blocks, splits)](*args[:3], cand, *args[3:], splits, **meta, KP=kp)
    return topk.unpack(topk.top_keys(cand, k))


def _search_chunked(q, g, k, alpha, weight, margin, mode):
    """Large k: dense scores for gallery chunks (Q x chunk in memory), merged by key."""
    chunk = max(k, (256 << 20) // max(4 * q.shape[0], 1))  # ~256 MB of scores per chunk
    best = None
    for n0 in range(0, g.shape[0], chunk):
        s = scores(q, g[n0:n0 + chunk], alpha, weight, None if margin is None else margin[n0:n0 + chunk], mode)
        best = topk.merge(best, topk.block_top(s, n0, k), k)
    return topk.unpack(best)
