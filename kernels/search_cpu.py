"""Set similarity and top-k search on the CPU (the embedded default): blocked torch.

Scores are computed for one block of queries against one block of the gallery at a time,
so memory is bounded by the block budget, not by N. Per block: one GEMM of the flattened
sets ([Nb*Kg, D] x [D, Qb*Kq]) that also scales and shifts (alpha * (cos - 1), safe because
rows are unit-norm), one in-place exp shared by both smooth-Chamfer directions, two sums
and logs. Large alphas, rows that are not unit-norm (detected: a non-finite result) and
MaxSim take the general logsumexp path. Top-k keeps a running candidate list per query,
merged block by block (kernels/topk.py). An 8-bit gallery (int8 sets with a per-row scale) is
dequantized one block at a time, never as a whole.
"""
from __future__ import annotations

import torch
from torch import Tensor

from kernels import topk
from kernels.quantize import dequantize_sets

BLOCK_BYTES = 16 << 20  # the [Nb, Kg, Qb, Kq] float32 cosine block: fits a large L2/L3 share
QUERY_BLOCK = 256
SHARED_SHIFT_MAX_ALPHA = 40.0  # exp(-2 alpha) stays a normal float32 (> 1e-38)
GATHER_BELOW = 0.25  # a filtered block keeping less than this share is gathered (measured: bench_live_gallery.py)


def block_scores(q: Tensor, g: Tensor, alpha: float, weight: float, mode: str) -> Tensor:
    """Scores [Qb, Nb] of float query sets [Qb, Kq, D] against gallery sets [Nb, Kg, D].
    Computed gallery-major ([Nb*Kg, D] x [D, Qb*Kq]): with few queries that GEMM orientation
    is 2-4x faster on CPU than the transposed one."""
    if weight == 0:
        return (g[:, 0] @ q[:, 0].T).T
    (nq, kq, d), (ng, kg) = q.shape, g.shape[:2]
    qf, gf = q.reshape(nq * kq, d), g.reshape(ng * kg, d)
    if mode == "chamfer" and kq * kg > 1 and alpha <= SHARED_SHIFT_MAX_ALPHA:
        # alpha * (cos - 1) straight out of the GEMM: unit rows have cos <= 1, so exp cannot
        # overflow, and cos >= -1 keeps it above float32's underflow while alpha <= 40
        x = torch.addmm(gf.new_full((), -alpha), gf, qf.T, alpha=alpha).view(ng, kg, nq, kq)
        glob = x[:, 0, :, 0] / alpha + 1
        e = x.exp_()
        lse = e.sum(1).log_().mean(2) + e.sum(3).log_().mean(1) + 2 * alpha
        if torch.isfinite(lse).all():  # else rows were not unit-norm: the general path below
            return glob.add_(lse, alpha=weight / (2 * alpha)).T
    cos = (gf @ qf.T).view(ng, kg, nq, kq)
    glob = cos[:, 0, :, 0].clone()
    if kq * kg == 1:  # one row each: the set term is the global cosine again
        return glob.mul_(1 + weight).T
    if mode == "maxsim":  # each query element's best gallery element, averaged over the query's
        return glob.add_(cos.amax(1).mean(2), alpha=weight).T
    cos.mul_(alpha)
    return glob.add_(torch.logsumexp(cos, dim=1).mean(2) + torch.logsumexp(cos, dim=3).mean(1),
                     alpha=weight / (2 * alpha)).T


def _blocks(q: Tensor, g: Tensor):
    """(query block start, gallery block start, block sizes) covering Q x N within BLOCK_BYTES."""
    qb = min(max(q.shape[0], 1), QUERY_BLOCK)
    nb = max(16, BLOCK_BYTES // (qb * q.shape[1] * g.shape[1] * 4))
    for q0 in range(0, q.shape[0], qb):
        for n0 in range(0, g.shape[0], nb):
            yield q0, n0, qb, nb


def _rows(g: Tensor, scale: Tensor | None, rows, dtype: torch.dtype) -> Tensor:
    """Gallery rows `rows` (a slice or indices) as `dtype`, dequantized where the gallery is 8-bit."""
    return g[rows].to(dtype) if scale is None else dequantize_sets(g[rows], scale[rows]).to(dtype)


def scores(q: Tensor, g: Tensor, alpha: float, weight: float, margin: Tensor | None, mode: str,
           scale: Tensor | None = None) -> Tensor:
    """Dense scores [Q, N] (evaluation ranks every gallery item), computed block by block;
    float32, or float64 for float64 inputs (gradient checks)."""
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.empty(q.shape[0], g.shape[0], dtype=dtype)
    for q0, n0, qb, nb in _blocks(q, g):
        out[q0:q0 + qb, n0:n0 + nb] = block_scores(q[q0:q0 + qb].to(dtype), _rows(g, scale, slice(n0, n0 + nb), dtype),
                                                   alpha, weight, mode)
    if margin is not None:
        out -= margin.to(dtype)
    return out


def search(q: Tensor, g: Tensor, k: int, alpha: float, weight: float, margin: Tensor | None,
           mode: str, allowed: Tensor | None = None, scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Top-k (scores [Q, k'], indices [Q, k']), k' = min(k, items allowed), streaming over
    gallery blocks. A block the filter keeps little of scores only its allowed rows
    (gathered), so a narrow filter costs in proportion to what it keeps; one it keeps most
    of is scored whole and the dropped items' scores set to -inf (a gather would cost more
    than it saves), which k' <= items allowed keeps out of the result."""
    k = min(k, g.shape[0] if allowed is None else int(allowed.sum()))
    keys = torch.full((q.shape[0], k), topk.EMPTY, dtype=torch.int64)
    best: dict[int, Tensor] = {}
    for q0, n0, qb, nb in _blocks(q, g):
        rows = slice(n0, n0 + nb)
        columns, dropped = n0, None  # columns: the gallery index of each score column (a start, or gathered rows)
        if allowed is not None:
            keep = allowed[rows]
            kept = int(keep.sum())
            if kept == 0:
                continue
            if kept < GATHER_BELOW * keep.numel():
                columns = rows = keep.nonzero().squeeze(1) + n0
            elif kept < keep.numel():
                dropped = ~keep
        s = block_scores(q[q0:q0 + qb].float(), _rows(g, scale, rows, torch.float32), alpha, weight, mode)
        if margin is not None:
            s -= margin[rows].float()
        if dropped is not None:
            s.masked_fill_(dropped, float("-inf"))
        best[q0] = topk.merge(best.get(q0), topk.block_top(s, columns, k), k)
    for q0, block in best.items():
        keys[q0:q0 + block.shape[0]] = block
    return topk.unpack(keys)
