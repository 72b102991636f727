"""Set-to-set similarity of embedding sets: the torch reference that defines correct.

An item is an embedding set [K+1, D] of L2-normalised rows, row 0 its global feature.
The retrieval score of query q against gallery item g is

    score(q, g) = cos(q_0, g_0) + weight * SC_alpha(q, g) - margin_g

with the smooth Chamfer similarity over the whole sets (global row included)

    SC_a(A, B) = 1/(2a|A|) sum_x log sum_y exp(a cos(x, y)) + 1/(2a|B|) sum_y log sum_x exp(a cos(x, y))

a soft "every element finds its best partner, both ways": as a grows it tends to the
mean of the best-match cosines in both directions. weight = 0 is plain global cosine;
with one row per set (K = 0) SC is that cosine too.

mode="maxsim" replaces SC by ColBERT's late interaction, one direction and a hard max:
MS(A, B) = 1/|A| sum_x max_y cos(x, y) (ColBERT sums; the mean keeps a cosine's scale).
"""
from __future__ import annotations

import torch
from torch import Tensor


def smooth_chamfer(cos: Tensor, alpha: float) -> Tensor:
    """SC_alpha from element cosines [..., Ka, Kb] -> [...]. logsumexp keeps it stable for
    large alpha (no exp overflow), and dividing by alpha keeps the scale of a cosine."""
    a_to_b = torch.logsumexp(alpha * cos, dim=-1).mean(-1)
    b_to_a = torch.logsumexp(alpha * cos, dim=-2).mean(-1)
    return (a_to_b + b_to_a) / (2 * alpha)


def slot_chamfer(query_sets: Tensor, gallery_sets: Tensor, alpha: float) -> Tensor:
    """SC_alpha of the slots alone (rows 1..K, global row left out): [Q, N]. Not a ranking score
    of its own: ESA's slot SDM trains on it and bench_set_terms.py measures what the slots carry."""
    return smooth_chamfer(torch.einsum("qkd,nld->qnkl", query_sets[:, 1:], gallery_sets[:, 1:]), alpha)


MODES = ("chamfer", "maxsim")


def max_sim(cos: Tensor) -> Tensor:
    """MS from element cosines [..., Ka, Kb] -> [...]: each A element's best B match, averaged."""
    return cos.amax(-1).mean(-1)


def check_inputs(query_sets: Tensor, gallery_sets: Tensor, alpha: float, margin: Tensor | None,
                 mode: str) -> None:
    """The errors every scoring path (reference, CPU, Triton) gives for the same bad input."""
    if mode not in MODES:
        raise ValueError(f"unknown set similarity mode {mode!r}; available: {', '.join(MODES)}")
    if query_sets.ndim != 3 or gallery_sets.ndim != 3 or query_sets.shape[-1] != gallery_sets.shape[-1]:
        raise ValueError(f"expected query [Q, Kq, D] and gallery [N, Kg, D] sets, got "
                         f"{tuple(query_sets.shape)} and {tuple(gallery_sets.shape)}")
    if min(query_sets.shape[1], gallery_sets.shape[1]) == 0:
        raise ValueError("embedding sets need at least one row (the global feature)")
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if margin is not None and margin.shape != (gallery_sets.shape[0],):
        raise ValueError(f"margin must have shape [{gallery_sets.shape[0]}], got {tuple(margin.shape)}")


def set_similarity_reference(query_sets: Tensor, gallery_sets: Tensor, alpha: float = 16.0,
                             weight: float = 1.0, margin: Tensor | None = None,
                             mode: str = "chamfer") -> Tensor:
    """Scores [Q, N] of query sets [Q, Kq, D] against gallery sets [N, Kg, D], in float32
    (float64 inputs stay float64). Materialises [Q, N, Kq, Kg]: callers block large inputs."""
    check_inputs(query_sets, gallery_sets, alpha, margin, mode)
    dtype = torch.float64 if torch.float64 in (query_sets.dtype, gallery_sets.dtype) else torch.float32
    q, g = query_sets.to(dtype), gallery_sets.to(dtype)
    score = q[:, 0] @ g[:, 0].T
    if weight != 0:
        cos = torch.einsum("qkd,nld->qnkl", q, g)
        score = score + weight * (smooth_chamfer(cos, alpha) if mode == "chamfer" else max_sim(cos))
    if margin is not None:
        score = score - margin.to(dtype)
    return score
