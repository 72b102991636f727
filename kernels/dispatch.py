"""The one scoring entry point: the Triton kernel for CUDA tensors, blocked torch otherwise.

`search` returns each query's top-k gallery items; `set_scores` the dense [Q, N] scores
(evaluation needs every item's rank). Both compute what
kernels.set_similarity.set_similarity_reference defines, without its Q x N x Kq x Kg memory.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from kernels import search_cpu, topk
from kernels.quantize import check_scale
from kernels.set_similarity import check_inputs


class Part(NamedTuple):
    """One part of a gallery held in parts (search_parts): the index of its first item (or, for
    items gathered from anywhere, the int64 tensor of their indices, ascending), its sets, and
    the margin, filter and 8-bit scale `search` takes for them (None: none)."""
    first: int | Tensor
    sets: Tensor
    margin: Tensor | None
    allowed: Tensor | None
    scale: Tensor | None = None


def _query_dtype(gallery_sets: Tensor, scale: Tensor | None) -> torch.dtype:
    """The dtype queries are cast to: the gallery's, or float16 for an 8-bit gallery (what the
    kernel's MMA multiplies; the CPU path takes the same rounding, so both rank alike)."""
    if scale is not None:
        check_scale(gallery_sets, scale)
        return torch.float16
    if gallery_sets.dtype == torch.int8:
        raise ValueError("an int8 gallery is scored with its scale (kernels.quantize.quantize_sets gives both)")
    return gallery_sets.dtype


def _backend(query_sets: Tensor, gallery_sets: Tensor):
    if query_sets.device != gallery_sets.device:
        raise ValueError(f"queries are on {query_sets.device} but the gallery is on {gallery_sets.device}")
    if gallery_sets.is_cuda:
        from kernels import search_triton  # triton is needed only where there is a GPU
        return search_triton
    return search_cpu


@torch.no_grad()
def search(query_sets: Tensor, gallery_sets: Tensor, k: int, alpha: float = 16.0, weight: float = 1.0,
           margin: Tensor | None = None, mode: str = "chamfer",
           allowed: Tensor | None = None, scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Top-k of each query: (scores float32 [Q, k'], indices int64 [Q, k']), sorted by score,
    ties to the lower gallery index. Queries [Q, Kq, D] and gallery [N, Kg, D] (fp32, fp16 or
    bf16) hold unit-norm rows, row 0 the global feature; queries are cast to the gallery's
    dtype, products accumulate in fp32. `allowed` (bool [N], the gallery's device) is a
    filter applied before the top-k: only its items can be returned, and k' = min(k, items
    allowed) (min(k, N) without it). `scale` (float32 [N, Kg]): the gallery is 8-bit (int8,
    kernels/quantize.py) and scored as its dequantized sets, queries cast to float16."""
    check_inputs(query_sets, gallery_sets, alpha, margin, mode)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if allowed is not None and (allowed.dtype != torch.bool or allowed.shape != gallery_sets.shape[:1]
                                or allowed.device != gallery_sets.device):
        raise ValueError(f"allowed must be a bool mask [{gallery_sets.shape[0]}] on {gallery_sets.device}, got "
                         f"{allowed.dtype} {tuple(allowed.shape)} on {allowed.device}")
    query_sets = query_sets.to(_query_dtype(gallery_sets, scale))  # one rounding on every device: same ranking
    return _backend(query_sets, gallery_sets).search(query_sets, gallery_sets, k, alpha, weight, margin, mode,
                                                     allowed, scale)


@torch.no_grad()
def search_parts(query_sets: Tensor, parts, k: int, alpha: float = 16.0, weight: float = 1.0,
                 mode: str = "chamfer") -> tuple[Tensor, Tensor]:
    """`search` over a gallery held in parts, each a Part (or a plain tuple of its first four
    or all five fields) as `search` takes them: the top-k over all parts, indices of the
    whole gallery (below 2**32), ties to the lower index, exactly as one search over the parts
    concatenated. A part of items gathered from anywhere (two-stage search's candidates) gives,
    instead of its first item's index, the int64 tensor of its items' indices, ascending. No
    parts: [Q, 0] results (every item excluded)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    keys = None
    for part in parts:
        first, sets, margin, allowed, scale = Part(*part)
        scores, index = search(query_sets, sets, k, alpha, weight, margin, mode, allowed, scale)
        keys = topk.merge(keys, topk.pack(scores, first[index] if torch.is_tensor(first) else index + first), k)
    if keys is None:
        empty = query_sets.new_empty((query_sets.shape[0], 0))
        return empty.float(), empty.long()
    return topk.unpack(keys)


@torch.no_grad()
def set_scores(query_sets: Tensor, gallery_sets: Tensor, alpha: float = 16.0, weight: float = 1.0,
               margin: Tensor | None = None, mode: str = "chamfer", scale: Tensor | None = None) -> Tensor:
    """Dense scores float32 [Q, N] on the inputs' device (`scale`: an 8-bit gallery, as in search)."""
    check_inputs(query_sets, gallery_sets, alpha, margin, mode)
    query_sets = query_sets.to(_query_dtype(gallery_sets, scale))
    return _backend(query_sets, gallery_sets).scores(query_sets, gallery_sets, alpha, weight, margin, mode, scale)


def prepare(query_rows: int, gallery_rows: int, dim: int, dtype: torch.dtype, device: str | torch.device,
            max_batch: int, max_k: int, alpha: float = 16.0, weight: float = 1.0, mode: str = "chamfer") -> int:
    """Compile, ahead of serving, every kernel variant that `search` can launch for queries
    [1..max_batch, query_rows, dim] against a gallery [*, gallery_rows, dim] of `dtype` (torch.int8:
    an 8-bit gallery with its scale) on `device`, k up to max_k, filtered or not, with or without a
    margin, at any gallery size: after it, no query compiles. The searches made (0 on the CPU: nothing to compile)."""
    device = torch.device(device)
    if device.type != "cuda":
        return 0
    from kernels import search_triton
    return search_triton.prepare(query_rows, gallery_rows, dim, dtype, device, max_batch, max_k, alpha, weight, mode)
