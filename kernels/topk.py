"""Exact top-k with ties broken by the lower gallery index, shared by the CPU and GPU paths.

A float32 score and its gallery index are packed into one int64 key whose integer order is
(score descending, index ascending): the score's bits made order-preserving as a signed
int32 in the high word, `2**32 - 1 - index` in the low word. A top-k over keys is then
exact and deterministic (torch.topk's order among equal floats is not), merging two top-k
lists is one more top-k, and a Triton kernel can build the same keys in registers.
Galleries are limited to 2**32 items.
"""
from __future__ import annotations

import torch
from torch import Tensor

LOW = 1 << 32
EMPTY = torch.iinfo(torch.int64).min  # a key below every real one: padding in candidate lists


def pack(scores: Tensor, index: Tensor) -> Tensor:
    """Keys of float32 scores and their gallery indices (same shape, or broadcastable)."""
    scores = torch.where(scores == 0, 0.0, scores.float())  # -0.0 and 0.0 are one score
    bits = scores.view(torch.int32)
    ordered = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).long()  # negative floats: flip magnitude bits
    return ordered * LOW + (LOW - 1 - index)


def unpack(keys: Tensor) -> tuple[Tensor, Tensor]:
    """(scores float32, indices int64) of keys; the inverse of pack."""
    ordered = (keys >> 32).int()
    bits = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)
    return bits.view(torch.float32), LOW - 1 - (keys & (LOW - 1))


def top_keys(keys: Tensor, k: int) -> Tensor:
    """The k largest keys of each row, sorted descending (fewer if a row is shorter)."""
    return keys.topk(min(k, keys.shape[-1]), dim=-1, sorted=True).values


def block_top(scores: Tensor, columns: int | Tensor, k: int) -> Tensor:
    """Top-k keys [Q, min(k, n)] of a block of scores [Q, n]; `columns` is the gallery index
    of column 0 (contiguous items) or of every column (a filtered block's gathered items).

    A float top-k first (packing every score costs more than the search's GEMM for K = 1),
    then only its k winners are packed and re-sorted. Its choice among scores equal to the
    k-th is arbitrary, so rows where such a tie straddles the k-th place are redone exactly."""
    values, index = scores.topk(min(k, scores.shape[-1]), dim=-1)
    contiguous = isinstance(columns, int)
    keys = pack(values, index + columns if contiguous else columns[index])
    kth = values[:, -1:]
    straddles = (scores == kth).sum(-1) > (values == kth).sum(-1)
    if straddles.any():
        full = torch.arange(columns, columns + scores.shape[-1], device=scores.device) if contiguous else columns
        keys[straddles] = top_keys(pack(scores[straddles], full), k)
    return top_keys(keys, k)


def merge(a: Tensor | None, b: Tensor, k: int) -> Tensor:
    """Top-k of two key lists per row: the streaming merge of per-block candidates."""
    return top_keys(b if a is None else torch.cat([a, b], dim=-1), k)
