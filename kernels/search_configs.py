"""Which config (BN gallery items a tile, BD of D a step, warps, pipeline stages) each launch of the
search kernels (kernels/search_triton.py) uses: decided ahead of time, never timed at run time, so
a server start compiles each kernel variant once and benchmarks nothing.

search_configs.json holds, per key (GPU architecture, kernel kind, dtype, query columns, gallery
rows, D, filter), the config benchmarks/kernels_aot.py --table chose among the spill-free ones it
compiled for that architecture (fewest SASS warp-instructions per item), under the Triton it names
(the one pyproject's [gpu] and the Dockerfile pin). A key it lacks (another GPU, D or set size; the
interpreter) takes the first of CONFIGS that fits: a fixed rule.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

SMEM_LIMIT = 227 * 1024  # dynamic shared memory one block may use on sm_90 (sm_80: 163 KB)

# (BN, BD, warps, stages): the configs a launch may use. The compile gate (benchmarks/kernels_aot.py)
# dropped (32, 64, 4, 3) and (64, 64, 8, 3): slower than these on sm_90 by instruction count, and
# spilling on sm_80.
CONFIGS = ((64, 64, 4, 3), (64, 128, 4, 2), (64, 128, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2))
CONFIG_TABLE = Path(__file__).with_name("search_configs.json")
ACC_BUDGET = 512  # fp32 elements of one [BN, C] tile per warp (16 a thread): more spills at C = 64


def smem_bytes(bn: int, bd: int, cols: int, stages: int, elsize: int) -> int:
    """Shared memory the pipelined loads of one D loop take: gallery [BN, BD] and query
    [BD, C] buffers per stage (upper bound: triton reuses them across the Kg loops)."""
    return stages * (bn + cols) * bd * elsize


def fits(config: tuple, cols: int, elsize: int, smem_limit: int) -> bool:
    """A config that can launch and run without spilling: [BN, C] tiles within ACC_BUDGET per
    warp and shared memory under the device's limit."""
    bn, bd, warps, stages = config
    return bn * cols <= ACC_BUDGET * warps and smem_bytes(bn, bd, cols, stages, elsize) <= smem_limit


def config_key(arch: int, kind: str, dtype: torch.dtype, meta: dict, d: int, filtered: bool) -> str:
    """The config table's key: GPU architecture, kernel kind, dtype, query columns (BQ x KQP),
    gallery rows, D and filter; everything else a variant specialises on costs no registers."""
    return (f"sm_{arch}/{kind}/{str(dtype).removeprefix('torch.')}/C{meta['BQ'] * meta['KQP']}/KG{meta['KG']}"
            f"/D{d}/{'filtered' if filtered else 'all'}")


@functools.lru_cache(maxsize=1)
def config_table() -> dict[str, list[int]]:
    """search_configs.json: per key, the config benchmarks/kernels_aot.py --table chose (fewest
    SASS warp-instructions per item among the spill-free ones it compiled)."""
    return json.loads(CONFIG_TABLE.read_text())["configs"]


def config_for(arch: int | None, kind: str, dtype: torch.dtype, meta: dict, d: int, filtered: bool,
               smem_limit: int = SMEM_LIMIT) -> tuple:
    """The config a launch uses: the table's for its key, else (another GPU, D or set size; the
    interpreter, arch None) the first of CONFIGS that fits, a fixed rule."""
    cols, elsize = meta["BQ"] * meta["KQP"], 4 if meta["IEEE"] else 2
    if arch is not None:
        chosen = config_table().get(config_key(arch, kind, dtype, meta, d, filtered))
        if chosen is not None and fits(tuple(chosen), cols, elsize, smem_limit):
            return tuple(chosen)
    for config in CONFIGS:
        if fits(config, cols, elsize, smem_limit):
            return config
    raise ValueError(f"no search kernel config fits C={cols} query columns")
