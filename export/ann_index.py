"""The first stage of two-stage search: an approximate nearest-neighbour index (FAISS) per sealed
gallery segment, whose candidates the fused search then scores exactly (kernels.search).

Proxies of an item, indexed with the item's local index (in its segment) as their id:
- `set` (the default): row 0 beside the mean of all rows, [g_0, mean_j g_j] (2D values an item),
  searched with [q_0, weight * mean_i q_i], whose inner product is cos(q_0, g_0) + weight x the
  mean cosine over all row pairs: the score's two terms with the smooth Chamfer's soft best
  matches replaced by the mean match. It tracks the exact score far better than row 0 alone
  (benchmarks/bench_two_stage.py, 1M near-duplicate items, half the IVF lists: recall@10 1.000
  at 100 candidates, against 0.541 for `global`);
- `global`: row 0 of its set (the global feature; D values an item), searched with the
  query's row 0: smallest;
- `rows`: every row of its set, searched with every row of the query (a candidate is an item
  any of whose rows is near any query row): K+1 vectors an item.
The index is any FAISS factory string over inner product (default `IVF{nlist},SQ8`, nlist about
4 sqrt(vectors): 8 bits a value, a quarter of fp32's bytes, and at 1M items as accurate and 3.5x
as fast, benchmarks/results/two_stage_cpu_sq8.json); rows are unit vectors, so inner product is
cosine. It is written beside the segment's sets as `<segment>.ann.<proxy>.faiss` and opened
memory-mapped where FAISS can. A missing or unreadable index is reported by `open_index` (None,
and why): that segment is then searched exactly, slower and never wrong (or refused: MISSING).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

import kernels

PROXIES = ("set", "global", "rows")
MISSING = ("scan", "refuse")  # what a server does with a segment without a usable index (tbps repo --ann-missing)
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
    if proxy == "rows":
        return (np.ascontiguousarray(sets.reshape(n * rows, -1), dtype=np.float32),
                np.repeat(np.arange(n, dtype=np.int64), rows))
    first = sets[:, 0].astype(np.float32)
    vectors = first if proxy == "global" else np.concatenate([first, sets.mean(axis=1, dtype=np.float32)], axis=1)
    return np.ascontiguousarray(vectors), np.arange(n, dtype=np.int64)


def _query_vectors(queries: np.ndarray, proxy: str, weight: float) -> np.ndarray:
    """The vectors a query set [Q, Kq+1, D] searches with, the item proxies' counterparts."""
    if proxy == "rows":
        vectors = queries.reshape(-1, queries.shape[-1])
    elif proxy == "global":
        vectors = queries[:, 0]
    else:
        vectors = np.concatenate([queries[:, 0], weight * queries.mean(axis=1)], axis=1)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def default_factory(vectors: int) -> str:
    """IVF with about 4 sqrt(vectors) lists, each with the 39 training vectors FAISS asks for, of
    8-bit values (FAISS's scalar quantizer, trained per dimension)."""
    return f"IVF{max(1, min(int(4 * math.sqrt(vectors)), vectors // 39))},SQ8"


def build_index(sets: np.ndarray, proxy: str = "set", factory: str | None = None, seed: int = 0):
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


def open_index(sets_file: str | os.PathLike, proxy: str, count: int, dim: int):
    """(the index of a segment of `count` sets of `dim` values a row, None) or (None, why it
    cannot be used: one line)."""
    faiss = _faiss()
    path = index_path(sets_file, proxy)
    if not path.is_file():
        return None, f"{path}: no ANN index (tbps ann GALLERY writes one): this segment is searched exactly"
    try:
        try:
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:  # index types FAISS cannot map: read into memory
            index = faiss.read_index(str(path))
    except RuntimeError as e:
        return None, f"{path}: not a readable FAISS index ({str(e).strip().splitlines()[-1][:160]}): searched exactly"
    if (index.ntotal != count) if proxy != "rows" else (index.ntotal == 0 or index.ntotal % count):
        return None, (f"{path}: holds {index.ntotal} vectors, not the {proxy} proxy of this segment's {count} items "
                      f"(another segment's index?): searched exactly")
    if index.d != (2 * dim if proxy == "set" else dim):
        return None, (f"{path}: vectors of {index.d} values, not the {proxy} proxy of {dim}-value rows "
                      f"(built with another --proxy?): searched exactly")
    return index, None


def _selector(faiss, within: tuple[int, int] | None, allowed: np.ndarray | None):
    """FAISS's id selector for local ids a..z-1 (a filter's zones), `allowed` [z - a] among them
    (a camera filter, erasures), or None for every id; with the bitmap that must outlive the search."""
    if within is None:
        return None, None
    a, z = within
    if allowed is None:
        return faiss.IDSelectorRange(a, z), None
    bits = np.zeros(z, dtype=bool)
    bits[a:z] = allowed
    bitmap = np.packbits(bits, bitorder="little")  # FAISS takes the bytes' count: ids past them are out
    return faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap)), bitmap


def candidates(index, queries: np.ndarray, n: int, proxy: str, nprobe: int | None = None, weight: float = 1.0,
               within: tuple[int, int] | None = None, allowed: np.ndarray | None = None) -> np.ndarray:
    """The union, sorted, of each query's `n` nearest items (int64 local ids): queries
    [Q, Kq+1, D] (`weight`: the score's, for the `set` proxy); under `rows` each query row asks
    for its n nearest rows. Only ids in `within` (a, z), and among them those `allowed` marks,
    are searched (FAISS id selectors: a filter takes its n candidates from the items it keeps).
    `nprobe`: IVF lists visited, default half of them: text queries lie apart from the image
    vectors the lists were trained on (the modality gap), so the lists nearest a query are often
    not those of its best images (benchmarks/bench_two_stage.py)."""
    faiss = _faiss()
    selector, _bitmap = _selector(faiss, within, allowed)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:  # FAISS's own default, one list, finds next to nothing for a text query
        params = faiss.SearchParametersIVF(nprobe=min(ivf.nlist, nprobe or max(1, ivf.nlist // 2)), sel=selector)
    else:
        params = None if selector is None else faiss.SearchParameters(sel=selector)
    _, ids = index.search(_query_vectors(queries, proxy, weight), min(n, index.ntotal), params=params)
    found = np.unique(ids)
    return found[found >= 0]


def build_gallery_indexes(gallery: str | os.PathLike, proxy: str = "set", factory: str | None = None,
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
    parser.add_argument("--proxy", choices=PROXIES, default="set",
                        help="set: row 0 beside the mean of the rows (2D values an item); global: row 0 (D values); "
                             "rows: every row (K+1 vectors an item)")
    parser.add_argument("--factory", default=None,
                        help="a FAISS index factory string over inner product (default IVF<4 sqrt(n)>,SQ8)")


def run(a) -> None:
    written = build_gallery_indexes(a.gallery, a.proxy, a.factory)
    print(f"wrote {len(written)} ANN indexes ({a.proxy}) beside {a.gallery}'s segments; serve two-stage with: "
          f"tbps repo ... --two-stage CANDIDATES --ann-proxy {a.proxy}")
