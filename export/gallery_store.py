"""Reading a gallery: the Gallery object, and the version-3 gallery directory behind it.

    GALLERY/gallery.json          the manifest: format, version 3, the checkpoint's fingerprint,
                                  scoring (alpha, weight), root, camera names, N, set shape, dtype,
                                  and each segment's item range, cameras, time range and files
    GALLERY/paths.sqlite          one table, items (idx INTEGER PRIMARY KEY, path TEXT): the paths
    GALLERY/<segment>.sets.npy    the sets [n, K+1, D] of items first .. first + n - 1
    GALLERY/<segment>.items.npy   their person id, time, camera and margin (ITEM_DTYPE [n])
    GALLERY/<segment>.scale.npy   8-bit galleries (dtype int8) only: each set row's float32 scale
                                  [n, K+1] (kernels/quantize.py: a row is its int8 codes x its scale)

Nothing of size N is in a header or in the manifest: a gallery's size is limited by its disk
(indices are int64). Opening reads the manifest and the item columns (24 bytes an item) and
checks every file's size and a digest of its head and tail (a truncated or foreign file is
refused by name); sets are memory-mapped, read when a segment is searched, and paths are read
from SQLite when asked for (`Gallery.paths` is a sequence over the table). Each segment
records its cameras and time range, so a filter can skip the segments it excludes.
"""
from __future__ import annotations

import hashlib
import json
import operator
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from export.gallery_meta import NO_CAMERA, NO_TIME, allowed_items, filter_bounds, may_match

FORMAT = "tbps-gallery"
VERSION = 3
MANIFEST, PATHS_DB = "gallery.json", "paths.sqlite"
ITEM_DTYPE = np.dtype([("person", "<i8"), ("time", "<i8"), ("camera", "<i4"), ("margin", "<f4")])
SET_DTYPES = {"float16": np.float16, "int8": np.int8}  # int8: with a per-row scale file (SCALED)
SCALED = "int8"
DIGEST_SPAN = 1 << 16  # bytes of a file's head and of its tail in its digest


class GalleryError(ValueError):
    """A gallery that cannot be used: the message names the file and what is wrong."""


def file_digest(path: Path) -> str:
    """sha256 of the size, head and tail of a file: cheap at any size, and a truncated,
    swapped or foreign file (other sets, other paths) does not match."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(DIGEST_SPAN))
        if size > DIGEST_SPAN:
            f.seek(max(DIGEST_SPAN, size - DIGEST_SPAN))
            h.update(f.read())
    return h.hexdigest()[:32]


@dataclass
class Segment:
    """Items first .. first + count - 1: their sets (in memory or a memory-mapped file), the
    camera indices among them and their time range ((lo, hi) ms, None: no known time)."""
    first: int
    count: int
    cameras: list[int]
    time: tuple[int, int] | None
    file: Path | None = None              # <segment>.sets.npy; None: `data` holds the sets
    data: torch.Tensor | None = field(default=None, repr=False)
    scale_file: Path | None = None        # <segment>.scale.npy of an 8-bit gallery; None: not 8-bit

    def sets(self) -> torch.Tensor:
        """[count, K+1, D], memory-mapped from the file (read as it is touched)."""
        if self.data is not None:
            return self.data
        # copy-on-write: a writable array for torch, and the file is never written
        return torch.from_numpy(np.load(self.file, mmap_mode="c"))

    def scale(self) -> torch.Tensor | None:
        """An 8-bit gallery's float32 row scales [count, K+1], memory-mapped (None: not 8-bit)."""
        return None if self.scale_file is None else torch.from_numpy(np.load(self.scale_file, mmap_mode="c"))

    def may_match(self, cameras: set[int] | None, lo: int | None, hi: int | None) -> bool:
        """Whether any item here can pass a filter (filter_bounds'): False skips the segment."""
        return may_match(set(self.cameras), self.time, cameras, lo, hi)


class Paths(Sequence):
    """The items' paths, read from the gallery's SQLite table as they are asked for."""

    def __init__(self, db_file: Path, n: int):
        self.db_file, self.n = db_file, n
        self.db = sqlite3.connect(f"file:{db_file}?mode=ro&immutable=1", uri=True, check_same_thread=False)

    def __len__(self) -> int:
        return self.n

    def range(self, start: int, stop: int) -> list[str]:
        return [p for (p,) in self.db.execute("SELECT path FROM items WHERE idx >= ? AND idx < ? ORDER BY idx",
                                              (start, stop))]

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(self.n)
            return self.range(start, stop) if step == 1 else [self[j] for j in range(start, stop, step)]
        i = operator.index(i)  # any integer a list takes (a 0-d tensor, numpy's)
        j = i + self.n if i < 0 else i
        if not 0 <= j < self.n:
            raise IndexError(f"path index {i} out of range for {self.n} items")
        return self.db.execute("SELECT path FROM items WHERE idx = ?", (j,)).fetchone()[0]

    def __iter__(self):
        for start in range(0, self.n, 1 << 16):
            yield from self.range(start, start + (1 << 16))

    def __eq__(self, other) -> bool:
        return isinstance(other, (list, Paths)) and len(other) == self.n and list(self) == list(other)

    def __add__(self, other) -> list[str]:
        return list(self) + list(other)

    def __radd__(self, other) -> list[str]:
        return list(other) + list(self)


class Gallery:
    """A validated gallery: the item columns in memory, the sets by segment (`segments`,
    `Segment.sets`) or, for a gallery small enough to hold, as one tensor (`sets`: the one
    segment's memory map, else a concatenated copy; a storage-less `meta` tensor when opened
    without sets). An 8-bit gallery (dtype int8) has int8 sets and their row scales (`scale`,
    `Segment.scale`); scale is None for float16."""

    def __init__(self, segments: list[Segment], set_shape: tuple[int, int], ids: torch.Tensor, paths: Sequence[str],
                 margin: torch.Tensor | None, fingerprint: str, alpha: float, weight: float, root: str = "",
                 cameras: list[str] = (), camera: torch.Tensor | None = None, time: torch.Tensor | None = None,
                 with_sets: bool = True, location: Path | None = None, dtype: str = "float16"):
        n = len(paths)
        self.segments, self.set_shape, self.ids, self.paths, self.margin = segments, tuple(set_shape), ids, paths, margin
        self.fingerprint, self.alpha, self.weight, self.root, self.cameras = fingerprint, alpha, weight, root, list(cameras)
        self.camera = torch.full((n,), NO_CAMERA, dtype=torch.int32) if camera is None else camera
        self.time = torch.full((n,), NO_TIME, dtype=torch.int64) if time is None else time
        self.with_sets, self.location, self.dtype, self._sets = with_sets, location, dtype, None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def sets(self) -> torch.Tensor:
        if not self.with_sets:
            return torch.empty((len(self), *self.set_shape), dtype=getattr(torch, self.dtype), device="meta")
        if self._sets is None:
            parts = [s.sets() for s in self.segments]
            self._sets = parts[0] if len(parts) == 1 else torch.cat(parts)
        return self._sets

    @property
    def scale(self) -> torch.Tensor | None:
        """The 8-bit sets' row scales [N, K+1] (float32; None: float16 sets, or opened without sets)."""
        if self.dtype != SCALED or not self.with_sets:
            return None
        parts = [s.scale() for s in self.segments]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def allowed(self, cameras=None, since=None, until=None) -> torch.Tensor | None:
        """The bool mask [N] of the items a query's filter keeps (None: no filter)."""
        return allowed_items(self.cameras, self.camera, self.time, cameras, since, until)

    def matching_segments(self, cameras=None, since=None, until=None) -> list[Segment]:
        """The segments a filter cannot exclude by their cameras and time range."""
        want, lo, hi = filter_bounds(self.cameras, cameras, since, until)
        return [s for s in self.segments if s.may_match(want, lo, hi)]


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise GalleryError(f"{folder}: not a gallery (a gallery directory holds {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise GalleryError(f"{path}: not JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise GalleryError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise GalleryError(f"{path}: gallery version {manifest.get('version')!r}; this reader reads version "
                           f"{VERSION} (and version 2 files)")
    return manifest


def _listed(folder: Path, spec: dict) -> Path:
    """A file the manifest lists: a plain name inside `folder`."""
    name = spec["file"]
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise GalleryError(f"{folder / MANIFEST}: lists {name!r}, not a file name in the gallery directory")
    return folder / name


def gallery_files(folder: Path) -> list[Path]:
    """Every file of the gallery directory `folder`, as its manifest lists them (the manifest first)."""
    m = read_manifest(folder)
    try:
        specs = [m["paths"]] + [s[kind] for s in m["segments"] for kind in ("sets", "items", "scale") if kind in s]
        return [folder / MANIFEST] + [_listed(folder, spec) for spec in specs]
    except (KeyError, TypeError) as e:
        raise GalleryError(f"{folder / MANIFEST}: bad manifest ({type(e).__name__}: {e})") from None


def _checked_file(folder: Path, spec: dict, what: str) -> Path:
    path = _listed(folder, spec)
    if not path.is_file():
        raise GalleryError(f"{path}: {what} is missing")
    size = path.stat().st_size
    if size != spec["bytes"]:
        raise GalleryError(f"{path}: {size:,} bytes where the manifest says {spec['bytes']:,} (truncated or "
                           f"replaced)")
    if file_digest(path) != spec["digest"]:
        raise GalleryError(f"{path}: its contents are not the ones the manifest lists (a file of another gallery?)")
    return path


def _array(path: Path, shape: tuple, dtype: np.dtype) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise GalleryError(f"{path}: not a readable .npy array ({e})") from None
    if array.shape != shape or array.dtype != dtype:
        raise GalleryError(f"{path}: {array.dtype} {list(array.shape)} where the manifest says {dtype} {list(shape)}")
    return array


def open_gallery_dir(folder: Path, fingerprint: str | None = None, with_sets: bool = True) -> Gallery:
    """The gallery directory `folder`, every file checked against its manifest."""
    try:
        return _open(folder, read_manifest(folder), fingerprint, with_sets)
    except GalleryError:
        raise
    except (KeyError, TypeError, ValueError) as e:  # a field missing, or of the wrong type
        raise GalleryError(f"{folder / MANIFEST}: bad manifest ({type(e).__name__}: {e})") from None


def _open(folder: Path, m: dict, fingerprint: str | None, with_sets: bool) -> Gallery:
    where = folder / MANIFEST
    n, set_shape, dtype = int(m["items"]), tuple(int(x) for x in m["set_shape"]), m["dtype"]
    cameras, specs = list(m["cameras"]), list(m["segments"])
    fp, alpha, weight, has_margin = str(m["fingerprint"]), float(m["alpha"]), float(m["weight"]), bool(m["margin"])
    if fingerprint is not None and fp != fingerprint:
        raise GalleryError(f"{folder}: built by checkpoint {fp}, but the model searching it is checkpoint "
                           f"{fingerprint}: rebuild the gallery with this checkpoint")
    if dtype not in SET_DTYPES or len(set_shape) != 2:
        raise GalleryError(f"{where}: sets of dtype {dtype!r} and shape {list(set_shape)} are not readable here")
    segments, columns, first = [], [], 0
    for s in specs:
        if s["first"] != first or s["count"] < 1:
            raise GalleryError(f"{where}: segment {s['sets']['file']} starts at item {s['first']} with "
                               f"{s['count']} items; items {first}.. were expected next")
        sets_file = _checked_file(folder, s["sets"], "a segment's sets")
        _array(sets_file, (s["count"], *set_shape), np.dtype(SET_DTYPES[dtype]))
        scale_file = None
        if dtype == SCALED:
            if "scale" not in s:
                raise GalleryError(f"{where}: segment {s['sets']['file']} of an int8 gallery lists no scale file")
            scale_file = _checked_file(folder, s["scale"], "a segment's scales")
            _array(scale_file, (s["count"], set_shape[0]), np.dtype(np.float32))
        columns.append(_array(_checked_file(folder, s["items"], "a segment's items"), (s["count"],), ITEM_DTYPE))
        time = None if s["time"] is None else (int(s["time"][0]), int(s["time"][1]))
        segments.append(Segment(first, s["count"], list(s["cameras"]), time, sets_file, scale_file=scale_file))
        first += s["count"]
    if first != n or n < 1:
        raise GalleryError(f"{where}: its segments hold {first} items, the manifest says {n}"
                           + ("" if n else " (a gallery needs at least one)"))
    db_file = _checked_file(folder, m["paths"], "the paths table")
    try:
        paths = Paths(db_file, n)
        (last,) = paths.db.execute("SELECT max(idx) FROM items").fetchone()
    except sqlite3.DatabaseError as e:
        raise GalleryError(f"{db_file}: not a readable paths table ({e})") from None
    if last != n - 1:
        raise GalleryError(f"{db_file}: holds paths up to item {last}, the manifest says {n} items")
    # each field into its own array, a segment at a time (no concatenated copy of the items)
    fields = {name: np.empty(n, ITEM_DTYPE[name]) for name in ITEM_DTYPE.names if has_margin or name != "margin"}
    for seg, column in zip(segments, columns):
        for name, array in fields.items():
            array[seg.first:seg.first + seg.count] = column[name]
    item = {name: torch.from_numpy(array) for name, array in fields.items()}
    if not (NO_CAMERA <= int(item["camera"].min()) and int(item["camera"].max()) < len(cameras)):
        raise GalleryError(f"{where}: camera indices must be -1 or below {len(cameras)}")
    return Gallery(segments, set_shape, item["person"], paths, item.get("margin"), fp, alpha, weight,
                   str(m.get("root", "")), cameras, item["camera"], item["time"], with_sets, folder, dtype)
