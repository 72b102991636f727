"""Set similarity, adaptive margin and top-k search fused in one OpenAI Triton scan (GPU path).

What one program computes (kernels/set_similarity.py defines the scores): for a block of BQ
queries and a tile of BN gallery items, the element cosines of every (query row i, gallery
row j) pair, then, in registers,

    glob      = cos[i=0, j=0]
    a2b       = mean_i log sum_j exp(alpha cos_ij) / alpha      (smooth Chamfer, both ways)
    b2a       = mean_j log sum_i exp(alpha cos_ij) / alpha
    score     = glob + weight (a2b + b2a) / 2 - margin           (MaxSim: mean_i max_j cos)

Tiling. The query block is the dot's N side: its BQ x Kq rows padded to C = BQ * KQP
columns (KQP = Kq rounded up to a power of two; C >= 8, the narrowest 16-bit MMA). The
gallery is the M side, one set row at a time: `for j in static_range(Kg)` loads row j of
BN items ([BN, BD] per D step) and accumulates cos_j [BN, C] in fp32. So the real Kg rows
are looped over (5 stays 5, not 8), and every reduction over gallery rows (a2b's sum,
MaxSim's max) is an elementwise update of a [BN, C] register tile; the reduction over
query rows (b2a) is a sum over KQP adjacent columns of the MMA layout (a reshape, no data
movement). No [Q, N, Kq, Kg] tensor exists anywhere.

Numerics. In the log2 domain (exp2/log2 are single MUFU instructions). For unit-norm rows
and alpha <= 40 the shift is a constant, alpha log2(e): cos <= 1 keeps exp2 <= 1 and cos >= -1
keeps it a normal float32, so one exp2 per cosine serves both directions (FIXED_SHIFT). Rows
that are not unit-norm can overflow or underflow it; the program then raises a flag in
device memory and a second, guarded launch recomputes everything with the general online
logsumexp (its programs return at once when the flag is clear), so the result is exact
either way without a device-to-host sync. Larger alphas always take the general path.

Top-k. A program walks tiles split, split + SPLITS, ... keeping its best KP (score, index)
keys (kernels/topk.py packing: exact, ties to the lower index) in registers. A tile changes
them only when one of its keys beats the lowest key held (FAISS's k-selection idea); then
keys are inserted one at a time, replacing the lowest, with no sort. The steady state costs
one max per query per tile. The host merges the SPLITS lists with one torch top-k. A filter
(one byte per item: camera, time window, erasures) makes the tile's keys of the items it
drops EMPTY, so they are never returned and cost no insertion.

Sizes. 64-bit offsets everywhere an offset can pass 2**31 elements (indices are cast before
they are multiplied by a stride); the top-k grid is (query blocks, splits), the dense grid
one axis over (gallery tile, query block) pairs, so no grid dimension nears a CUDA limit
for any gallery that the key packing allows (2**32 items).

fp32 galleries use IEEE fp32 products (no TF32) so scores match the reference to fp32
rounding; fp16/bf16 galleries multiply in their dtype with fp32 accumulation.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.extra import libdevice

from kernels import topk

LOG2E = 1.4426950408889634
FIXED_SHIFT_MAX_ALPHA = 40.0  # as in search_cpu: exp2(alpha log2e (cos - 1)) stays normal for cos >= -1
MAX_TOPK_PER_TILE = 64  # larger k: dense scores in gallery chunks, merged on the host
EMPTY_KEY = tl.constexpr(-9223372036854775808)  # topk.EMPTY
MAX_GRID_X = 2**31 - 1  # CUDA's limit on grid axis 0 (axes 1 and 2: 65,535)
MAX_GRID_YZ = 65535
SMEM_LIMIT = 227 * 1024  # dynamic shared memory one block may use on sm_90 (sm_80: 163 KB)

# (BN, BD, warps, stages). The compile gate (benchmarks/kernels_aot.py) dropped (32, 64, 4, 3) and
# (64, 64, 8, 3): slower than these on sm_90 by instruction count, and spilling on sm_80.
CONFIGS = [triton.Config({"BN": bn, "BD": bd}, num_warps=w, num_stages=st)
           for bn, bd, w, st in ((64, 64, 4, 3), (64, 128, 4, 2), (64, 128, 8, 2), (128, 64, 8, 3),
                                 (128, 128, 8, 2))]
ACC_BUDGET = 512  # fp32 elements of one [BN, C] tile per warp (16 a thread): more spills at C = 64
MAX_COLS = 64  # query columns a program holds: 8 sets of 5 rows padded to 8 at Q >= 8


def smem_bytes(bn: int, bd: int, cols: int, stages: int, elsize: int) -> int:
    """Shared memory the pipelined loads of one D loop take: gallery [BN, BD] and query
    [BD, C] buffers per stage (upper bound: triton reuses them across the Kg loops)."""
    return stages * (bn + cols) * bd * elsize


def smem_limit(named_args: dict) -> int:
    """Shared memory a block may use on the device the launch runs on (the compile gate
    passes its target's as `smem_limit`). Launches pass keywords, which triton hands the
    prune as `meta`, so the gallery is looked up in both."""
    if "smem_limit" in named_args:
        return named_args["smem_limit"]
    g = named_args.get("g_ptr")
    if isinstance(g, torch.Tensor) and g.is_cuda:
        return torch.cuda.get_device_properties(g.device).shared_memory_per_block_optin
    return SMEM_LIMIT


def prune(configs, named_args, **meta):
    """Configs that can launch and run without spilling: [BN, C] tiles within ACC_BUDGET per
    warp and shared memory under the device's limit. The interpreter (CI, no GPU) cannot
    time configs: it runs the first valid one."""
    cols = meta["BQ"] * meta["KQP"]
    elsize = 4 if meta["IEEE"] else 2
    limit = smem_limit({**meta, **named_args})
    kept = [c for c in configs
            if c.kwargs["BN"] * cols <= ACC_BUDGET * c.num_warps
            and smem_bytes(c.kwargs["BN"], c.kwargs["BD"], cols, c.num_stages, elsize) <= limit]
    if not kept:
        raise ValueError(f"no search kernel config fits C={cols} query columns")
    return kept[:1] if os.environ.get("TRITON_INTERPRET") == "1" else kept


@triton.jit
def _log2(x, HW_LOG2: tl.constexpr):
    """log2 as one MUFU.LG2 (lg2.approx, relative error ~2**-22) on the GPU; tl.log2 is a
    ~20-instruction software routine there. The interpreter has no libdevice: tl.log2."""
    if HW_LOG2:
        return libdevice.fast_log2f(x)
    else:
        return tl.log2(x)


@triton.jit
def _tile_scores(q_ptr, g_ptr, margin_ptr, q0, n0, Q, N, D,
                 stride_qq, stride_qk, stride_gn, stride_gk, alpha_log2, weight,
                 KQ: tl.constexpr, KG: tl.constexpr, KQP: tl.constexpr, BQ: tl.constexpr,
                 BN: tl.constexpr, BD: tl.constexpr, HAS_MARGIN: tl.constexpr, MAXSIM: tl.constexpr,
                 FIXED_SHIFT: tl.constexpr, IEEE: tl.constexpr, HW_LOG2: tl.constexpr,
                 D_ALIGNED: tl.constexpr):
    """Scores [BN, BQ] of queries q0 .. q0+BQ against gallery items n0 .. n0+BN (-inf where
    either does not exist)."""
    C: tl.constexpr = BQ * KQP
    offs_n = n0 + tl.arange(0, BN)
    cols = tl.arange(0, C)
    col_q = q0 + cols // KQP  # column c holds row c % KQP of query c // KQP
    col_i = cols % KQP
    q_rows = col_q.to(tl.int64) * stride_qq + col_i * stride_qk
    q_ok = (col_q < Q) & (col_i < KQ)
    g_items = offs_n.to(tl.int64) * stride_gn  # cast first: n * stride passes 2**31 at 1M x 5 x 512
    n_ok = offs_n < N
    offs_d = tl.arange(0, BD)
    row_ok = (col_i < KQ)[None, :]  # [1, C]: which columns are real query rows
    glob = tl.zeros((BN, BQ), dtype=tl.float32)
    b2a = tl.zeros((BN, BQ), dtype=tl.float32)
    run = tl.zeros((BN, C), dtype=tl.float32)  # a2b's sum over j (FIXED_SHIFT) / MaxSim's max
    top = tl.zeros((BN, C), dtype=tl.float32)  # the general path's running max over j
    for j in tl.static_range(KG):
        cos = tl.zeros((BN, C), dtype=tl.float32)
        for d0 in range(0, D, BD):
            d = d0 + offs_d
            d_ok = (d < D) | D_ALIGNED  # constant true when every block divides D: no mask to build
            g = tl.load(g_ptr + (g_items + j * stride_gk)[:, None] + d[None, :],
                        mask=n_ok[:, None] & d_ok[None, :], other=0.0)
            q = tl.load(q_ptr + q_rows[None, :] + d[:, None], mask=q_ok[None, :] & d_ok[:, None], other=0.0)
            if IEEE:
                cos = tl.dot(g, q, cos, input_precision="ieee")
            else:
                cos = tl.dot(g, q, cos)
        if j == 0:
            glob = tl.sum(tl.reshape(tl.where(col_i[None, :] == 0, cos, 0.0), (BN, BQ, KQP)), axis=2)
        if MAXSIM:
            if j == 0:
                run = cos
            else:
                run = tl.maximum(run, cos)
        elif FIXED_SHIFT:
            e = tl.where(row_ok, tl.exp2(cos * alpha_log2 - alpha_log2), 0.0)
            run += e
            b2a += _log2(tl.sum(tl.reshape(e, (BN, BQ, KQP)), axis=2), HW_LOG2)
        else:  # online logsumexp over j; an exact logsumexp over the KQP columns of row j
            x = tl.where(row_ok, cos * alpha_log2, -1e30)  # finite floor: no inf - inf = nan
            if j == 0:
                top = x
                run = tl.full((BN, C), 1.0, dtype=tl.float32)
            else:
                new_top = tl.maximum(top, x)
                run = run * tl.exp2(top - new_top) + tl.exp2(x - new_top)
                top = new_top
            x3 = tl.reshape(x, (BN, BQ, KQP))
            m = tl.max(x3, axis=2)
            b2a += _log2(tl.sum(tl.exp2(x3 - m[:, :, None]), axis=2), HW_LOG2) + m
    if MAXSIM:
        set_term = tl.sum(tl.reshape(tl.where(row_ok, run, 0.0), (BN, BQ, KQP)), axis=2) / KQ
    else:
        lse = _log2(run, HW_LOG2)
        if not FIXED_SHIFT:
            lse += top
        a2b = tl.sum(tl.reshape(tl.where(row_ok, lse, 0.0), (BN, BQ, KQP)), axis=2)
        set_term = (a2b / KQ + b2a / KG) / (2.0 * alpha_log2)
        if FIXED_SHIFT:
            set_term += 1.0  # the constant shift, alpha log2(e), added back: / (alpha log2 e) = 1
    score = glob + weight * set_term
    if HAS_MARGIN:
        score -= tl.load(margin_ptr + offs_n, mask=n_ok, other=0.0)[:, None]
    offs_q = q0 + tl.arange(0, BQ)
    ok = n_ok[:, None] & (offs_q < Q)[None, :]
    return tl.where(ok, score, float("-inf")), ok


@triton.jit
def _not_finite(score, ok):
    """1 if a real item's score is inf or nan (the fixed shift overflowed or underflowed)."""
    return tl.max(tl.where(ok & ~(tl.abs(score) < float("inf")), 1, 0))


@triton.autotune(configs=CONFIGS, key=["D", "KQ", "KG", "KQP", "BQ", "MAXSIM", "FIXED_SHIFT", "IEEE", "GUARDED"],
                 prune_configs_by={"early_config_prune": prune})
@triton.jit
def _dense_kernel(q_ptr, g_ptr, margin_ptr, out_ptr, flag_ptr, Q, N, D,
                  stride_qq, stride_qk, stride_gn, stride_gk, alpha_log2, weight,
                  KQ: tl.constexpr, KG: tl.constexpr, KQP: tl.constexpr, BQ: tl.constexpr,
                  HAS_MARGIN: tl.constexpr, MAXSIM: tl.constexpr, FIXED_SHIFT: tl.constexpr,
                  IEEE: tl.constexpr, HW_LOG2: tl.constexpr, D_ALIGNED: tl.constexpr, GUARDED: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    """out[q, n] for one (gallery tile, query block) pair; consecutive programs share a
    gallery tile, so it is read from HBM once and from L2 by the other query blocks."""
    q_blocks = tl.cdiv(Q, BQ)
    pid = tl.program_id(0)
    n0 = (pid // q_blocks) * BN
    q0 = (pid % q_blocks) * BQ
    go = True
    if GUARDED:  # the general-path rerun: only where the fixed-shift launch raised the flag
        go = tl.load(flag_ptr) != 0
    if go:
        score, ok = _tile_scores(q_ptr, g_ptr, margin_ptr, q0, n0, Q, N, D,
                                 stride_qq, stride_qk, stride_gn, stride_gk, alpha_log2, weight,
                                 KQ, KG, KQP, BQ, BN, BD, HAS_MARGIN, MAXSIM, FIXED_SHIFT, IEEE, HW_LOG2, D_ALIGNED)
        offs_n = n0 + tl.arange(0, BN)
        offs_q = q0 + tl.arange(0, BQ)
        tl.store(out_ptr + offs_q[None, :].to(tl.int64) * N + offs_n[:, None], score, mask=ok)
        if FIXED_SHIFT:
            if _not_finite(score, ok) != 0:
                tl.store(flag_ptr, 1)


@triton.jit
def _keys(score, offs_n, ok):
    """kernels/topk.py keys of scores [BN, BQ]: order-preserving score bits high, 2**32 - 1 -
    index low (so a key orders by score, then by the lower index); EMPTY where not ok."""
    score = tl.where(score == 0.0, 0.0, score)  # -0.0 and 0.0 are one score
    bits = score.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    low = 4294967295 - offs_n.to(tl.int64)
    return tl.where(ok, (ordered.to(tl.int64) << 32) + low[:, None], EMPTY_KEY)


@triton.autotune(configs=CONFIGS,
                 key=["D", "KQ", "KG", "KQP", "BQ", "MAXSIM", "FIXED_SHIFT", "IEEE", "GUARDED", "KP", "HAS_FILTER"],
                 prune_configs_by={"early_config_prune": prune})
@triton.jit
def _topk_kernel(q_ptr, g_ptr, margin_ptr, allowed_ptr, cand_ptr, flag_ptr, Q, N, D,
                 stride_qq, stride_qk, stride_gn, stride_gk, alpha_log2, weight, SPLITS,
                 KQ: tl.constexpr, KG: tl.constexpr, KQP: tl.constexpr, BQ: tl.constexpr,
                 HAS_MARGIN: tl.constexpr, MAXSIM: tl.constexpr, FIXED_SHIFT: tl.constexpr,
                 IEEE: tl.constexpr, HW_LOG2: tl.constexpr, D_ALIGNED: tl.constexpr, GUARDED: tl.constexpr, KP: tl.constexpr,
                 HAS_FILTER: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    """Program (query block, split) writes its top-KP keys, unsorted, to
    cand[q, split*KP : (split+1)*KP].

    `best` [KP, BQ] is a bounded set, not a sorted list: while some query's best key in the
    tile beats the lowest key it holds (`floor`), that key replaces it. Keys are unique (the
    index is in them), so each pass inserts one key per query that needs it. The loop runs
    once per new entry: KP times on the first tile, then ever more rarely (the chance that an
    item is among the best KP seen so far falls as KP / items seen). A filter (`allowed`,
    one byte per item) makes the items it drops EMPTY keys, below every real one."""
    pid_q = tl.program_id(0)
    split = tl.program_id(1)
    q0 = pid_q * BQ
    offs_q = q0 + tl.arange(0, BQ)
    slots = tl.arange(0, KP)
    best = tl.full((KP, BQ), EMPTY_KEY, dtype=tl.int64)
    floor = tl.full((BQ,), EMPTY_KEY, dtype=tl.int64)
    bad = 0
    go = True
    if GUARDED:
        go = tl.load(flag_ptr) != 0
    if go:
        for tile in range(split, tl.cdiv(N, BN), SPLITS):
            n0 = tile * BN
            score, ok = _tile_scores(q_ptr, g_ptr, margin_ptr, q0, n0, Q, N, D,
                                     stride_qq, stride_qk, stride_gn, stride_gk, alpha_log2, weight,
                                     KQ, KG, KQP, BQ, BN, BD, HAS_MARGIN, MAXSIM, FIXED_SHIFT, IEEE, HW_LOG2, D_ALIGNED)
            offs_n = n0 + tl.arange(0, BN)
            if HAS_FILTER:
                ok = ok & (tl.load(allowed_ptr + offs_n, mask=offs_n < N, other=0) != 0)[:, None]
            if FIXED_SHIFT:
                bad = tl.maximum(bad, _not_finite(score, ok))
            keys = _keys(score, offs_n, ok)
            top = tl.max(keys, axis=0)  # [BQ]
            while tl.max((top > floor).to(tl.int32)) != 0:
                take = top > floor
                slot = tl.min(tl.where(best == floor[None, :], slots[:, None], KP), axis=0)
                best = tl.where((slots[:, None] == slot[None, :]) & take[None, :], top[None, :], best)
                keys = tl.where((keys == top[None, :]) & take[None, :], EMPTY_KEY, keys)
                top = tl.max(keys, axis=0)
                floor = tl.min(best, axis=0)
        cand = cand_ptr + offs_q[None, :].to(tl.int64) * (SPLITS * KP) + (split * KP + slots)[:, None]
        tl.store(cand, best, mask=(offs_q < Q)[None, :])
        if FIXED_SHIFT:
            if bad != 0:
                tl.store(flag_ptr, 1)


def launch_meta(nq: int, kq: int, kg: int, d: int, dtype: torch.dtype, alpha: float, margin: bool, mode: str,
                compiled: bool = True) -> dict:
    """The constexprs of a launch (everything but the autotuned BN, BD and the general-path
    GUARDED rerun): one definition for the launchers and the ahead-of-time compile gate."""
    kqp = triton.next_power_of_2(kq)
    # C = BQ * KQP columns: >= 8 (narrowest 16-bit MMA), 16 for fp32's FMA dot; up to 64 with
    # many queries, so one gallery tile is reused by more of them
    narrowest = 16 if dtype == torch.float32 else 8
    cols = MAX_COLS if nq * kqp >= MAX_COLS else max(narrowest, triton.next_power_of_2(nq * kqp))
    return dict(KQ=kq, KG=kg, KQP=kqp, BQ=max(1, cols // kqp), HAS_MARGIN=margin, MAXSIM=mode == "maxsim",
                FIXED_SHIFT=mode == "chamfer" and alpha <= FIXED_SHIFT_MAX_ALPHA, IEEE=dtype == torch.float32,
                HW_LOG2=compiled, D_ALIGNED=d % max(c.kwargs["BD"] for c in CONFIGS) == 0)


def splits_for(q_blocks: int, n: int, sms: int) -> int:
    """Programs per query block: enough (with the query blocks) for ~4 resident CTAs per SM."""
    return max(1, min(4 * sms // q_blocks, triton.cdiv(n, 32), MAX_GRID_YZ))


def _prepare(q: Tensor, g: Tensor, margin: Tensor | None, weight: float):
    """Views as the kernels read them. Rows need a unit stride along D only: a strided gallery
    (a slice, a memory-mapped file) is read in place, not copied. weight = 0 scores the
    global rows alone."""
    if weight == 0:
        q, g = q[:, :1], g[:, :1]
    if g.stride(-1) != 1:
        g = g.contiguous()
    q = q.to(g.dtype)  # tl.dot multiplies in one dtype
    if q.stride(-1) != 1:
        q = q.contiguous()
    return q, g, None if margin is None else margin.float().contiguous()


def _scalars(q: Tensor, g: Tensor, alpha: float, weight: float) -> dict:
    return dict(Q=q.shape[0], N=g.shape[0], D=g.shape[2], stride_qq=q.stride(0), stride_qk=q.stride(1),
                stride_gn=g.stride(0), stride_gk=g.stride(1), alpha_log2=alpha * LOG2E, weight=float(weight))


def _passes(meta: dict) -> list[dict]:
    """The launches of one call: with the fixed shift, that pass and then the guarded
    general-path rerun (its programs return at once unless the first raised the flag)."""
    first = dict(meta, GUARDED=False)
    return [first, dict(meta, FIXED_SHIFT=False, GUARDED=True)] if meta["FIXED_SHIFT"] else [first]


def dense_grid(nq: int, n: int, bq: int, bn: int) -> tuple[int]:
    programs = triton.cdiv(nq, bq) * triton.cdiv(n, bn)
    if programs > MAX_GRID_X:
        raise ValueError(f"{nq} queries x {n} items need {programs} programs, over CUDA's {MAX_GRID_X}")
    return (programs,)


def scores(q: Tensor, g: Tensor, alpha: float, weight: float, margin: Tensor | None, mode: str) -> Tensor:
    """Dense scores [Q, N] float32 on the tensors' device."""
    q, g, margin = _prepare(q, g, margin, weight)
    out = torch.empty(q.shape[0], g.shape[0], dtype=torch.float32, device=g.device)
    if out.numel() == 0:
        return out
    meta = launch_meta(q.shape[0], q.shape[1], g.shape[1], g.shape[2], g.dtype, alpha, margin is not None, mode,
                       compiled=g.is_cuda)
    flag = torch.zeros(1, dtype=torch.int32, device=g.device)
    grid = lambda m: dense_grid(q.shape[0], g.shape[0], m["BQ"], m["BN"])  # noqa: E731
    for launch in _passes(meta):
        _dense_kernel[grid](q_ptr=q, g_ptr=g, margin_ptr=g if margin is None else margin, out_ptr=out,
                            flag_ptr=flag, **_scalars(q, g, alpha, weight), **launch)
    return out


def search(q: Tensor, g: Tensor, k: int, alpha: float, weight: float, margin: Tensor | None,
           mode: str, allowed: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Top-k (scores [Q, k'], indices [Q, k']), k' = min(k, items allowed). A filter costs one
    host sync (its count sets k')."""
    nq, n = q.shape[0], g.shape[0]
    k = min(k, n if allowed is None else int(allowed.sum()))
    if nq == 0 or k == 0:
        return torch.empty(nq, k, device=g.device), torch.empty(nq, k, dtype=torch.int64, device=g.device)
    if k > MAX_TOPK_PER_TILE:
        return _search_chunked(q, g, k, alpha, weight, margin, mode, allowed)
    q, g, margin = _prepare(q, g, margin, weight)
    kp = triton.next_power_of_2(k)
    meta = launch_meta(nq, q.shape[1], g.shape[1], g.shape[2], g.dtype, alpha, margin is not None, mode,
                       compiled=g.is_cuda)
    q_blocks = triton.cdiv(nq, meta["BQ"])
    if q_blocks > MAX_GRID_X:
        raise ValueError(f"{nq} queries need {q_blocks} query blocks, over CUDA's {MAX_GRID_X}")
    sms = torch.cuda.get_device_properties(g.device).multi_processor_count if g.is_cuda else 1
    splits = splits_for(q_blocks, n, sms)
    cand = torch.empty((nq, splits * kp), dtype=torch.int64, device=g.device)
    flag = torch.zeros(1, dtype=torch.int32, device=g.device)
    for launch in _passes(meta):
        _topk_kernel[(q_blocks, splits)](
            q_ptr=q, g_ptr=g, margin_ptr=g if margin is None else margin,
            allowed_ptr=g if allowed is None else allowed.view(torch.uint8), cand_ptr=cand, flag_ptr=flag,
            **_scalars(q, g, alpha, weight), SPLITS=splits, KP=kp, HAS_FILTER=allowed is not None, **launch)
    return topk.unpack(topk.top_keys(cand, k))


def _search_chunked(q, g, k, alpha, weight, margin, mode, allowed):
    """Large k: dense scores for gallery chunks (Q x chunk in memory), merged by key; items a
    filter drops score -inf, and k <= items allowed keeps them out of the result."""
    chunk = max(k, (256 << 20) // max(4 * q.shape[0], 1))  # ~256 MB of scores per chunk
    best = None
    for n0 in range(0, g.shape[0], chunk):
        s = scores(q, g[n0:n0 + chunk], alpha, weight, None if margin is None else margin[n0:n0 + chunk], mode)
        if allowed is not None:
            s.masked_fill_(~allowed[n0:n0 + chunk], float("-inf"))
        best = topk.merge(best, topk.block_top(s, n0, k), k)
    return topk.unpack(best)
