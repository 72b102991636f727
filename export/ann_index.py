"""The first stage of two-stage search: an approximate nearest-neighbour index (FAISS) per sealed
gallery segment, whose candidates the fused search then scores exactly (kernels.search).

Proxies of an item, indexed with the item's local index (in its segment) as their id:
- `global`: row 0 of its set (the global feature; one vector an item), searched with the
  query's row 0: smallest and fastest;
- `rows`: every row of its set, searched with every row of the query (a candidate is an item
  any of whose rows is near any query row): K+1 vectors an item, higher recall.
The index is any FAISS factory string over inner product (default `IVF{nlist},Flat`, nlist about
4 sqrt(vectors)); rows are unit vectors, so inner product is cosine. It is written beside the
segment's sets as `<segment>.ann.<proxy>.faiss` and opened memory-mapped where FAISS can. A
missing or unreadable index is reported by `open_index` (None, and why): that segment is then
searched exactly, slower and never wrong.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

import kernels

PROXIES = ("global", "rows")
INDEX_SUFFIX = ".ann.{proxy}.faiss"


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("two-stage search needs FAISS: pip install faiss-cpu (or a faiss-gpu build)") from None
    return faiss


def _vectors(sets: np.ndarray, proxy: str) -> tuple[np.ndarray, np.ndarray]:
    """(float32 vectors, their item ids) of sets [n, K+1, D] under `proxy`."""
    if proxy not in PROXIES:
        raise ValueError(f"unknown proxy {proxy!r}; proxies: {', '.join(PROXIES)}")
    n, rows, _ = sets.shape
    if proxy == "global":
        return np.ascontiguousarray(sets[:, 0], dtype=np.float32), np.arange(n, dtype=np.int64)
    return (np.ascontiguousarray(sets.reshape(n * rows, -1), dtype=np.float32),
            np.repeat(np.arange(n, dtype=np.int64), rows))


def default_factory(vectors: int) -> str:
    """IVF with about 4 sqrt(vectors) lists, each with the 39 training vectors FAISS asks for."""
    return f"IVF{max(1, min(int(4 * math.sqrt(vectors)), vectors // 39))},Flat"


def build_index(sets: np.ndarray, proxy: str = "global", factory: str | None = None, seed: int = 0):
    """A trained, filled FAISS index over a segment's sets [n, K+1, D] (any float dtype)."""
    faiss = _faiss()
    vectors, ids = _vectors(sets, proxy)
    index = faiss.index_factory(vectors.shape[1], factory or default_factory(len(vectors)), faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:  # 256 vectors a list train as well as all of them, at a fraction of the time
        ivf = faiss.try_extract_index_ivf(index)
        take = min(len(vectors), 256 * (ivf.nlist if ivf is not None else 1))
        index.train(vectors[np.random.default_rng(seed).choice(len(vectors), take, replace=False)])
    if faiss.try_extract_index_ivf(index) is None:  # no ids of their own (HNSW, Flat): ids through a map
        index = faiss.IndexIDMap(index)
    index.add_with_ids(vectors, ids)
    return index


def index_path(sets_file: str | os.PathLike, proxy: str) -> Path:
    sets_file = Path(sets_file)
    return sets_file.with_name(sets_file.name.removesuffix(".sets.npy") + INDEX_SUFFIX.format(proxy=proxy))


def write_index(index, sets_file: str | os.PathLike, proxy: str) -> Path:
    """Beside the segment, atomically (a reader never sees half an index)."""
    path = index_path(sets_file, proxy)
    tmp = path.with_name(path.name + ".tmp")
    _faiss().write_index(index, str(tmp))
    os.replace(tmp, path)
    return path


def open_index(sets_file: str | os.PathLike, proxy: str, count: int):
    """(the segment's index, None) or (None, why it cannot be used: one line)."""
    faiss = _faiss()
    path = index_path(sets_file, proxy)
    if not path.is_file():
        return None, f"{path}: no ANN index (tbps ann build): this segment is searched exactly"
    try:
        try:
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:  # index types FAISS cannot map: read into memory
            index = faiss.read_index(str(path))
    except RuntimeError as e:
        return None, f"{path}: not a readable FAISS index ({str(e).strip().splitlines()[-1][:160]}): searched exactly"
    if (index.ntotal != count) if proxy == "global" else (index.ntotal == 0 or index.ntotal % count):
        return None, (f"{path}: holds {index.ntotal} vectors, not the {proxy} proxy of this segment's {count} items "
                      f"(another segment's index?): searched exactly")
    return index, None


def candidates(index, queries: np.ndarray, n: int, proxy: str, nprobe: int | None = None) -> np.ndarray:
    """The union, sorted, of each query's `n` nearest items (int64 local ids): queries
    [Q, Kq+1, D]; under `rows` each query row asks for its n nearest rows. `nprobe`: IVF lists
    visited, default half of them: text queries lie apart from the image vectors the lists were
    trained on (the modality gap), so the lists nearest a query are often not those of its best
    images (benchmarks/bench_two_stage.py: at 100k, 1/32 of the lists keep 20% of the top-10,
    1/2 of them 100% at 1,000 candidates)."""
    faiss = _faiss()
    vectors = np.ascontiguousarray(queries[:, 0] if proxy == "global" else queries.reshape(-1, queries.shape[-1]),
                                   dtype=np.float32)
    params, ivf = None, faiss.try_extract_index_ivf(index)
    if ivf is not None:  # FAISS's own default, one list, finds next to nothing for a text query
        params = faiss.SearchParametersIVF(nprobe=min(ivf.nlist, nprobe or max(1, ivf.nlist // 2)))
    _, ids = index.search(vectors, min(n, index.ntotal), params=params)
    found = np.unique(ids)
    return found[found >= 0]


def build_gallery_indexes(gallery: str | os.PathLike, proxy: str = "global", factory: str | None = None,
                          progress=print) -> list[Path]:
    """An index beside every segment of a version-3 gallery (replacing any of that proxy)."""
    from export.gallery import load_gallery
    g = load_gallery(gallery)
    if any(s.file is None for s in g.segments):
        raise ValueError(f"{gallery}: a version 1 or 2 gallery file has no segments to index: convert it first "
                         f"(tbps compact, or rebuild it with tbps gallery)")
    written = []
    for n, segment in enumerate(g.segments, 1):
        sets, scale = segment.sets(), segment.scale()
        if scale is not None:  # 8-bit: the vectors are the values the codes stand for
            sets = kernels.dequantize_sets(sets, scale)
        written.append(write_index(build_index(sets.numpy(), proxy, factory), segment.file, proxy))
        progress(f"ANN index {n}/{len(g.segments)}: items {segment.first}..{segment.first + segment.count - 1} "
                 f"-> {written[-1].name}")
    return written


def add_arguments(parser) -> None:
    parser.add_argument("gallery", help="a version-3 gallery directory (tbps gallery)")
    parser.add_argument("--proxy", choices=PROXIES, default="global",
                        help="global: row 0 of each set (one vector an item); rows: every row (K+1 an item)")
    parser.add_argument("--factory", default=None,
                        help="a FAISS index factory string over inner product (default IVF<4 sqrt(n)>,Flat)")


def run(a) -> None:
    written = build_gallery_indexes(a.gallery, a.proxy, a.factory)
    print(f"wrote {len(written)} ANN indexes ({a.proxy}) beside {a.gallery}'s segments; serve two-stage with: "
          f"tbps repo ... --two-stage CANDIDATES --ann-proxy {a.proxy}")
