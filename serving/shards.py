"""Shard a gallery over S servers: S contiguous slices, one model repository each.

Each shard's gallery_search knows the global index of its first image (`index_offset`), so
the INDICES it returns are global and the client's merge (serving/client.py) breaks ties
exactly as a single search over the whole gallery does. Images ingested live into shard s are
numbered from `added_offset` = N + s * ADDED_RANGE (N: the whole gallery's size), so indices
stay unique over shards without the shards agreeing on anything at run time. A server's own
local shards (its GPUs, `local_shards`) split its range again, LOCAL_ADDED_RANGE each.
"""
from __future__ import annotations

import os
from pathlib import Path

from export.gallery import load_gallery
from export.gallery_writer import rewrite_gallery
from serving.repository import write_repository

ADDED_RANGE = 1 << 40  # the indices of one shard's live additions: more than any shard will hold
MAX_LOCAL_SHARDS = 64  # the GPUs of one server (tbps repo --local-shards)
LOCAL_ADDED_RANGE = ADDED_RANGE // MAX_LOCAL_SHARDS  # a local shard's additions: all fit its server's range


def split_gallery(gallery: str | os.PathLike, shards: int, out_dir: str | os.PathLike) -> list[tuple[Path, int]]:
    """(gallery, index offset) of each of `shards` near-equal contiguous slices, streamed
    segment by segment (a gallery of any size; every shard keeps all camera names)."""
    g = load_gallery(gallery)  # a version-3 gallery's sets stay on disk until a segment is copied
    if not 1 <= shards <= len(g):
        raise ValueError(f"cannot split a gallery of {len(g)} images into {shards} shards")
    bounds = [round(i * len(g) / shards) for i in range(shards + 1)]
    return [(rewrite_gallery(g, Path(out_dir) / f"gallery_shard{i}", a, b), a)
            for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]


def write_shard_repositories(source: str | os.PathLike, gallery: str | os.PathLike, shards: int,
                             out_dir: str | os.PathLike, **options) -> list[Path]:
    """OUT/shard{i}/ repositories (see serving.repository.write_repository for `options`)."""
    out_dir = Path(out_dir)
    total = len(load_gallery(gallery, with_sets=False))
    return [write_repository(source, path, out_dir / f"shard{i}", index_offset=offset,
                             added_offset=total + i * ADDED_RANGE, **options)
            for i, (path, offset) in enumerate(split_gallery(gallery, shards, out_dir / "galleries"))]
