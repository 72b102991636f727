"""8-bit embedding sets: symmetric int8 per row, with a float32 scale per row.

Each row x of a set (one embedding) is stored as q = round(x / s), s = max|x| / 127, so
x ~ q * s with an error of at most s / 2 per element. The scale is float32, not float16:
4 bytes a row (0.8% of a 5 x 512 int8 set), and the dequantized value q * s is then the
product of two exact numbers, with no second rounding of the scale to explain or test.
Scoring an 8-bit gallery (kernels.search / set_scores with `scale`) means scoring the
dequantized sets, dequantize_sets(q, s), in float32.
"""
from __future__ import annotations

import torch
from torch import Tensor

LEVELS = 127  # symmetric: -127..127, so -x quantizes to exactly -q


def quantize_sets(sets: Tensor) -> tuple[Tensor, Tensor]:
    """(int8 sets [N, Kg, D], float32 scale [N, Kg]) of float sets [N, Kg, D]; an all-zero row
    gets scale 0 (and dequantizes to zeros)."""
    if sets.ndim != 3 or not sets.is_floating_point():
        raise ValueError(f"expected float sets [N, Kg, D], got {sets.dtype} {tuple(sets.shape)}")
    x = sets.float()
    scale = x.abs().amax(dim=2) / LEVELS
    q = torch.round(x / torch.where(scale > 0, scale, 1.0)[..., None]).clamp_(-LEVELS, LEVELS)
    return q.to(torch.int8), scale


def check_scale(sets: Tensor, scale: Tensor) -> None:
    """An 8-bit gallery's sets and scale agree: int8 [N, Kg, D] and float32 [N, Kg] on one device."""
    if sets.dtype != torch.int8:
        raise ValueError(f"a scale goes with int8 sets, got {sets.dtype} sets")
    if scale.dtype != torch.float32 or scale.shape != sets.shape[:2] or scale.device != sets.device:
        raise ValueError(f"scale must be float32 [{sets.shape[0]}, {sets.shape[1]}] on {sets.device} like the "
                         f"sets' rows, got {scale.dtype} {list(scale.shape)} on {scale.device}")


def dequantize_sets(q: Tensor, scale: Tensor) -> Tensor:
    """float32 sets [N, Kg, D] = q * scale, row by row."""
    check_scale(q, scale)
    return q.float() * scale[..., None]
