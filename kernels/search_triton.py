"""Set similarity, adaptive margin and top-k search fused in one OpenAI Triton scan (GPU path).

What one program computes (kernels/set_similarity.py defines the scores): for a block of BQ
queries and a tile of BN gallery items, the element cosines of every (query row i, gallery
row j) pair, then, in registers,

    score = cos[0, 0] + weight (a2b + b2a) / 2 - margin, a2b = mean_i log sum_j exp(alpha cos_ij) / alpha,
    b2a likewise over i (smooth Chamfer both ways; MaxSim: mean_i max_j cos_ij)

Tiling. The query block is the dot's N side: its BQ x Kq rows padded to C = BQ * KQP columns
(KQP = Kq rounded up to a power of two; C >= 8, the narrowest 16-bit MMA). The gallery is the M
side, one set row at a time: `for j in static_range(Kg)` loads row j of BN items and accumulates
cos_j [BN, C] in fp32, so the real Kg rows are looped over (5 stays 5), every reduction over
gallery rows is an elementwise update of a [BN, C] register tile, and the one over query rows
(b2a) a sum over KQP adjacent MMA columns. No [Q, N, Kq, Kg] tensor exists anywhere.

Numerics. In the log2 domain (exp2/log2 are single MUFU instructions). For unit-norm rows and
alpha <= 40 the shift is a constant, alpha log2(e) (FIXED_SHIFT): cos <= 1 keeps exp2 <= 1 and
cos >= -1 keeps it normal, so one exp2 per cosine serves both directions. Rows that are not unit
norm can leave that range; the program then raises a flag in device memory and a second, guarded
launch (whose programs return at once when it is clear) recomputes with the general online
logsumexp: exact either way, with no device-to-host sync. Larger alphas take the general path.

Top-k. A program walks tiles split, split + SPLITS, ... keeping its best KP (score, index) keys
(kernels/topk.py packing: exact, ties to the lower index) in registers; a tile changes them only
when one of its keys beats the lowest held (FAISS's k-selection), one insertion at a time, no
sort. The host merges the SPLITS lists with one torch top-k. A filter (a byte per item: camera,
time, erasures) makes the keys of the items it drops EMPTY: never returned, never inserted.

Sizes. 64-bit offsets wherever one can pass 2**31 elements; the top-k grid is (query blocks,
splits), the dense grid one axis over (tile, query block) pairs: no grid dimension nears a CUDA
limit for any gallery the key packing allows (2**32 items). fp32 galleries use IEEE products (no
TF32); fp16/bf16 multiply in their dtype with fp32 accumulation.

8-bit galleries (SCALED, kernels/quantize.py) load int8 tiles (half the bytes), convert them to fp16
in registers (exact) and scale the [BN, C] cosines by each row's float32 scale after the D loop:
integer x fp16 products are exact in fp32, where scaling the tile first would round every q * s.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.extra import libdevice

from kernels import topk
from kernels.quantize import quantize_sets
from kernels.search_configs import CONFIGS, SMEM_LIMIT, config_for

LOG2E = 1.4426950408889634
FIXED_SHIFT_MAX_ALPHA = 40.0  # as in search_cpu: exp2(alpha log2e (cos - 1)) stays normal for cos >= -1
MAX_TOPK_PER_TILE = 64  # larger k: dense scores in gallery chunks, merged on the host
EMPTY_KEY = tl.constexpr(-9223372036854775808)  # topk.EMPTY
MAX_GRID_X = 2**31 - 1  # CUDA's limit on grid axis 0 (axes 1 and 2: 65,535)
MAX_GRID_YZ = 65535
MAX_COLS = 64  # query columns a program holds: 8 sets of 5 rows padded to 8 at Q >= 8
KP_BUCKETS = (16, MAX_TOPK_PER_TILE)  # top-k slots a program keeps: two variants cover every k <= 64
# launch arguments that change from call to call: never specialised, so a new batch size,
# gallery size (an ingest), split count or margin use compiles nothing
RUNTIME_ARGS = ["Q", "N", "SPLITS", "has_margin"]


@triton.jit
def _log2(x, HW_LOG2: tl.constexpr):
    """log2 as one MUFU.LG2 (lg2.approx, relative error ~2**-22) on the GPU; tl.log2 is a
    ~20-instruction software routine there. The interpreter has no libdevice: tl.log2."""
    if HW_LOG2:
        return libdevice.fast_log2f(x)
    else:
        return tl.log2(x)


@triton.jit
def _tile_scores(q_ptr, g_ptr, margin_ptr, scale_ptr, q0, n0, Q, N, D,
                 stride_qq, stride_qk, stride_gn, stride_gk, stride_sn, alpha_log2, weight, has_margin,
                 KQ: tl.constexpr, KG: tl.constexpr, KQP: tl.constexpr, BQ: tl.constexpr,
                 BN: tl.constexpr, BD: tl.constexpr, MAXSIM: tl.constexpr,
                 FIXED_SHIFT: tl.constexpr, IEEE: tl.constexpr, HW_LOG2: tl.constexpr,
                 D_ALIGNED: tl.constexpr, SCALED: tl.constexpr):
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
            if SCALED:
                g = g.to(tl.float16)  # exact: int8 codes are integers of at most 127
            q = tl.load(q_ptr + q_rows[None, :] + d[:, None], mask=q_ok[None, :] & d_ok[:, None], other=0.0)
            if IEEE:
                cos = tl.dot(g, q, cos, input_precision="ieee")
            else:
                cos = tl.dot(g, q, cos)
        if SCALED:  # row j's scale, once per cosine (see the module docstring: after the dot, not before)
            cos *= tl.load(scale_ptr + offs_n.to(tl.int64) * stride_sn + j, mask=n_ok, other=0.0)[:, None]
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
    # a runtime flag, not a constexpr: text queries (margin) and image/LIKE queries share a variant;
    # without a margin the load is fully masked and reads nothing
    score -= tl.load(margin_ptr + offs_n, mask=offs_n < N * has_margin, other=0.0)[:, None]
    offs_q = q0 + tl.arange(0, BQ)
    ok = n_ok[:, None] & (offs_q < Q)[None, :]
    return tl.where(ok, score, float("-inf")), ok


@triton.jit
def _not_finite(score, ok):
    """1 if a real item's score is inf or nan (the fixed shift overflowed or underflowed)."""
    return tl.max(tl.where(ok & ~(tl.abs(score) < float("inf")), 1, 0))


@triton.jit(do_not_specialize=RUNTIME_ARGS)
def _dense_kernel(q_ptr, g_ptr, margin_ptr, scale_ptr, out_ptr, flag_ptr, Q, N, D,
                  stride_qq, stride_qk, stride_gn, stride_gk, stride_sn, alpha_log2, weight, has_margin,
                  KQ: tl.constexpr, KG: tl.constexpr, KQP: tl.constexpr, BQ: tl.constexpr,
                  MAXSIM: tl.constexpr, FIXED_SHIFT: tl.constexpr,
                  IEEE: tl.constexpr, HW_LOG2: tl.constexpr, D_ALIGNED: tl.constexpr, SCALED: tl.constexpr,
                  GUARDED: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
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
        score, ok = _tile_scores(q_ptr, g_ptr, margin_ptr, scale_ptr, q0, n0, Q, N, D,
                                 stride_qq, stride_qk, stride_gn, stride_gk, stride_sn, alpha_log2, weight, has_margin,
                                 KQ, KG, KQP, BQ, BN, BD, MAXSIM, FIXED_SHIFT, IEEE, HW_LOG2, D_ALIGNED, SCALED)
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


@triton.jit(do_not_specialize=RUNTIME_ARGS)
def _topk_kernel(q_ptr, g_ptr, margin_ptr, scale_ptr, allowed_ptr, cand_ptr, flag_ptr, Q, N, D,
                 stride_qq, stride_qk, stride_gn, stride_gk, stride_sn, alpha_log2, weight, has_margin, SPLITS,
                 KQ: tl.constexpr, KG: tl.constexpr, KQP: tl.constexpr, BQ: tl.constexpr,
                 MAXSIM: tl.constexpr, FIXED_SHIFT: tl.constexpr,
                 IEEE: tl.constexpr, HW_LOG2: tl.constexpr, D_ALIGNED: tl.constexpr, SCALED: tl.constexpr,
                 GUARDED: tl.constexpr, KP: tl.constexpr,
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
            score, ok = _tile_scores(q_ptr, g_ptr, margin_ptr, scale_ptr, q0, n0, Q, N, D,
                                     stride_qq, stride_qk, stride_gn, stride_gk, stride_sn, alpha_log2, weight,
                                     has_margin, KQ, KG, KQP, BQ, BN, BD, MAXSIM, FIXED_SHIFT, IEEE, HW_LOG2,
                                     D_ALIGNED, SCALED)
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


def launch_meta(nq: int, kq: int, kg: int, d: int, dtype: torch.dtype, alpha: float, mode: str,
                compiled: bool = True) -> dict:
    """The constexprs of a launch (everything but the config's BN, BD and the general-path
    GUARDED rerun): one definition for the launchers and the ahead-of-time compile gate.
    dtype torch.int8: an 8-bit gallery (SCALED), multiplied as fp16."""
    kqp = triton.next_power_of_2(kq)
    # C = BQ * KQP columns: >= 8 (narrowest 16-bit MMA), 16 for fp32's FMA dot; up to 64 with
    # many queries, so one gallery tile is reused by more of them
    narrowest = 16 if dtype == torch.float32 else 8
    cols = MAX_COLS if nq * kqp >= MAX_COLS else max(narrowest, triton.next_power_of_2(nq * kqp))
    return dict(KQ=kq, KG=kg, KQP=kqp, BQ=max(1, cols // kqp), MAXSIM=mode == "maxsim",
                FIXED_SHIFT=mode == "chamfer" and alpha <= FIXED_SHIFT_MAX_ALPHA, IEEE=dtype == torch.float32,
                HW_LOG2=compiled, D_ALIGNED=d % max(c[1] for c in CONFIGS) == 0, SCALED=dtype == torch.int8)


def kp_for(k: int) -> int:
    """Top-k slots a program keeps for k <= MAX_TOPK_PER_TILE: a bucket, so k picks one of two variants."""
    return next(kp for kp in KP_BUCKETS if k <= kp)


def splits_for(q_blocks: int, n: int, sms: int, cols: int) -> int:
    """Programs per query block: with the query blocks, one wave of the CTAs an SM holds: ~4, but one
    at MAX_COLS query columns (255 registers a thread, 8 warps; benchmarks/kernels_aot.py). More
    programs only cost more: each walks fewer tiles, so more of its tiles insert into its top-k."""
    resident = 1 if cols >= MAX_COLS else 4
    return max(1, min(resident * sms // q_blocks, triton.cdiv(n, 32), MAX_GRID_YZ))


def _prepare(q: Tensor, g: Tensor, margin: Tensor | None, weight: float, scale: Tensor | None):
    """Views as the kernels read them. Rows need a unit stride along D only: a strided gallery
    (a slice, a memory-mapped file) is read in place, not copied. weight = 0 scores the
    global rows alone."""
    if weight == 0:
        q, g = q[:, :1], g[:, :1]
        scale = None if scale is None else scale[:, :1]
    if g.stride(-1) != 1:
        g = g.contiguous()
    q = q.to(torch.float16 if scale is not None else g.dtype)  # tl.dot multiplies in one dtype
    if q.stride(-1) != 1:
        q = q.contiguous()
    return q, g, None if margin is None else margin.float().contiguous(), scale


def _scalars(q: Tensor, g: Tensor, alpha: float, weight: float, margin: Tensor | None,
             scale: Tensor | None) -> dict:
    # without a margin, a float32 stand-in: a pointer of another dtype would be another variant; without a
    # scale, None: a constexpr, so the variants of fp16 galleries have the parameters they had before int8
    margin_ptr = torch.zeros(1, device=g.device) if margin is None else margin
    return dict(q_ptr=q, g_ptr=g, margin_ptr=margin_ptr, has_margin=int(margin is not None), scale_ptr=scale,
                stride_sn=None if scale is None else scale.stride(0),
                Q=q.shape[0], N=g.shape[0], D=g.shape[2], stride_qq=q.stride(0), stride_qk=q.stride(1),
                stride_gn=g.stride(0), stride_gk=g.stride(1), alpha_log2=alpha * LOG2E, weight=float(weight))


def _passes(meta: dict) -> list[dict]:
    """The launches of one call: with the fixed shift, that pass and then the guarded
    general-path rerun (its programs return at once unless the first raised the flag)."""
    first = dict(meta, GUARDED=False)
    return [first, dict(meta, FIXED_SHIFT=False, GUARDED=True)] if meta["FIXED_SHIFT"] else [first]


def device_guard(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' (a caller whose current
    device is cuda:0 searching tensors on cuda:1 would otherwise launch on the wrong GPU)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _launch(kernel, grid, kind: str, meta: dict, filtered: bool, args: dict) -> None:
    """Every launch of the search kernels: its config (config_for: the same for the guarded
    rerun as for the first pass), under its tensors' device."""
    g = args["g_ptr"]
    arch = smem = None
    if g.is_cuda:
        major, minor = torch.cuda.get_device_capability(g.device)
        arch, smem = 10 * major + minor, torch.cuda.get_device_properties(g.device).shared_memory_per_block_optin
    first = dict(meta, GUARDED=False)
    bn, bd, warps, stages = config_for(arch, kind, g.dtype, first, args["D"], filtered,
                                       SMEM_LIMIT if smem is None else smem)
    with device_guard(g.device):
        for launch in _passes(meta):
            kernel[grid(launch["BQ"], bn)](**args, **launch, BN=bn, BD=bd, num_warps=warps, num_stages=stages)


def dense_grid(nq: int, n: int, bq: int, bn: int) -> tuple[int]:
    programs = triton.cdiv(nq, bq) * triton.cdiv(n, bn)
    if programs > MAX_GRID_X:
        raise ValueError(f"{nq} queries x {n} items need {programs} programs, over CUDA's {MAX_GRID_X}")
    return (programs,)


def scores(q: Tensor, g: Tensor, alpha: float, weight: float, margin: Tensor | None, mode: str,
           scale: Tensor | None = None) -> Tensor:
    """Dense scores [Q, N] float32 on the tensors' device (`scale`: an 8-bit gallery's)."""
    q, g, margin, scale = _prepare(q, g, margin, weight, scale)
    out = torch.empty(q.shape[0], g.shape[0], dtype=torch.float32, device=g.device)
    if out.numel() == 0:
        return out
    meta = launch_meta(q.shape[0], q.shape[1], g.shape[1], g.shape[2], g.dtype, alpha, mode, compiled=g.is_cuda)
    flag = torch.zeros(1, dtype=torch.int32, device=g.device)
    _launch(_dense_kernel, lambda bq, bn: dense_grid(q.shape[0], g.shape[0], bq, bn), "dense", meta, False,
            dict(_scalars(q, g, alpha, weight, margin, scale), out_ptr=out, flag_ptr=flag))
    return out


def search(q: Tensor, g: Tensor, k: int, alpha: float, weight: float, margin: Tensor | None,
           mode: str, allowed: Tensor | None = None, scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Top-k (scores [Q, k'], indices [Q, k']), k' = min(k, items allowed). A filter costs one
    host sync (its count sets k'). `scale`: an 8-bit gallery's."""
    nq, n = q.shape[0], g.shape[0]
    k = min(k, n if allowed is None else int(allowed.sum()))
    if nq == 0 or k == 0:
        return torch.empty(nq, k, device=g.device), torch.empty(nq, k, dtype=torch.int64, device=g.device)
    if k > MAX_TOPK_PER_TILE:
        return _search_chunked(q, g, k, alpha, weight, margin, mode, allowed, scale)
    q, g, margin, scale = _prepare(q, g, margin, weight, scale)
    kp = kp_for(k)
    meta = launch_meta(nq, q.shape[1], g.shape[1], g.shape[2], g.dtype, alpha, mode, compiled=g.is_cuda)
    q_blocks = triton.cdiv(nq, meta["BQ"])
    if q_blocks > MAX_GRID_X:
        raise ValueError(f"{nq} queries need {q_blocks} query blocks, over CUDA's {MAX_GRID_X}")
    sms = torch.cuda.get_device_properties(g.device).multi_processor_count if g.is_cuda else 1
    splits = splits_for(q_blocks, n, sms, meta["BQ"] * meta["KQP"])
    cand = torch.empty((nq, splits * kp), dtype=torch.int64, device=g.device)
    flag = torch.zeros(1, dtype=torch.int32, device=g.device)
    _launch(_topk_kernel, lambda bq, bn: (q_blocks, splits), "topk", dict(meta, KP=kp, HAS_FILTER=allowed is not None),
            allowed is not None,
            dict(_scalars(q, g, alpha, weight, margin, scale),
                 allowed_ptr=g if allowed is None else allowed.view(torch.uint8),
                 cand_ptr=cand, flag_ptr=flag, SPLITS=splits))
    return topk.unpack(topk.top_keys(cand, k))


def _search_chunked(q, g, k, alpha, weight, margin, mode, allowed, scale):
    """Large k: dense scores for gallery chunks (Q x chunk in memory), merged by key; items a
    filter drops score -inf, and k <= items allowed keeps them out of the result."""
    chunk = max(k, (256 << 20) // max(4 * q.shape[0], 1))  # ~256 MB of scores per chunk
    chunk = -(-chunk // 16) * 16  # chunk starts stay 16-byte aligned: an unaligned slice is another variant
    best = None
    for n0 in range(0, g.shape[0], chunk):
        s = scores(q, g[n0:n0 + chunk], alpha, weight, None if margin is None else margin[n0:n0 + chunk], mode,
                   None if scale is None else scale[n0:n0 + chunk])
        if allowed is not None:
            s.masked_fill_(~allowed[n0:n0 + chunk], float("-inf"))
        best = topk.merge(best, topk.block_top(s, n0, k), k)
    return topk.unpack(best)


def variants(nq: int, kq: int, kg: int, d: int, dtype: torch.dtype, k: int | None, alpha: float, weight: float,
             mode: str, filtered: bool = False) -> set[tuple]:
    """The kernel variants (kind and constexprs, passes included) that search (k, already at most the
    items allowed) or, with k None, scores launch for these shapes: what a run must compile."""
    if weight == 0:
        kq = kg = 1
    meta = launch_meta(nq, kq, kg, d, dtype, alpha, mode)
    if k is None or k > MAX_TOPK_PER_TILE:
        kind = "dense"
    else:
        kind, meta = "topk", dict(meta, KP=kp_for(k), HAS_FILTER=filtered)
    return {(kind, d, str(dtype), *sorted(launch.items())) for launch in _passes(meta)}


def prepare(kq: int, kg: int, d: int, dtype: torch.dtype, device: torch.device, max_batch: int, max_k: int,
            alpha: float, weight: float, mode: str) -> int:
    """Compile every variant that searches of these shapes can launch, so that none compiles
    later: one search per query-block size a batch of 1..max_batch gives, per top-k bucket up
    to max_k (and the dense path above MAX_TOPK_PER_TILE), filtered or not, on a small gallery
    of the right shape (sizes are runtime arguments; a margin is a runtime flag). Returns the
    searches made."""
    gen = torch.Generator().manual_seed(0)
    unit = lambda n, k: torch.nn.functional.normalize(torch.randn(n, k, d, generator=gen), dim=-1)  # noqa: E731
    n = MAX_TOPK_PER_TILE + 1
    g = unit(n, kg)  # an 8-bit gallery: its sets and their scale
    g, scale = (t.to(device) for t in quantize_sets(g)) if dtype == torch.int8 else (g.to(device, dtype), None)
    margin = torch.zeros(n, device=device)
    batches = {}
    for nq in range(1, max_batch + 1):  # the smallest batch of each query-block size
        batches.setdefault(launch_meta(nq, kq, kg, d, dtype, alpha, mode)["BQ"], nq)
    ks, lowest = [], 1
    for bucket in KP_BUCKETS:  # a k of each bucket that max_k reaches
        if max_k >= lowest:
            ks.append(min(bucket, max_k))
        lowest = bucket + 1
    ks += [n] if max_k > MAX_TOPK_PER_TILE else []  # the chunked dense path
    done = 0
    for nq in batches.values():
        q = unit(nq, kq).to(device)
        for k in ks:
            for allowed in (None, torch.ones(n, dtype=torch.bool, device=device)):
                search(q, g, k, alpha, weight, margin, mode, allowed, scale)
                done += 1
    return done
