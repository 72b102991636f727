"""Writing a gallery directory (export/gallery_store.py's version 3), streamed and atomic.

GalleryWriter takes items in batches of any size and streams them into fixed-size segments:
each batch goes straight to its segment's file, so a writer holds one batch, never the
gallery. Everything is written into a temporary directory beside the target, each file and
the directory fsynced, then swapped in with one rename (an exchange where the target exists),
so a reader sees the old gallery or the new one, never part of one; a failure (a full disk,
an exception, a kill) leaves the old gallery exactly as it was.

An 8-bit gallery (dtype "int8") stores each segment's int8 sets and, beside them, their float32
row scales (<segment>.scale.npy): float sets given to `add` are quantized here
(kernels.quantize_sets), int8 sets come with their scale (a copy of an 8-bit gallery: no
second rounding).
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import sqlite3
import struct
import uuid
from pathlib import Path

import numpy as np
import torch

from export.gallery_meta import NO_CAMERA, NO_TIME
from export.gallery_store import (FORMAT, ITEM_DTYPE, MANIFEST, PATHS_DB, SCALED, SET_DTYPES, VERSION, Gallery,
                                  GalleryError, file_digest, gallery_files)
from kernels.quantize import check_scale, quantize_sets
from trainer.records import sync_path

SEGMENT_SIZE = 1 << 20  # items per segment
HEADER = 256  # bytes of every .npy header the writer reserves, so rows stream in before the count is known
COPY_ROWS = 1 << 16  # items per batch when one gallery is copied into another


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        os.remove(path)


def _npy_header(dtype: np.dtype, shape: tuple) -> bytes:
    """A .npy version 1.0 header padded to HEADER bytes (np.load reads it as any other)."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)})
    if len(text) > HEADER - 11:
        raise ValueError(f".npy header of {len(text)} bytes for {dtype} {shape}: more than the {HEADER} reserved")
    body = text.encode("latin1").ljust(HEADER - 10 - 1) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body


class _Column:
    """A .npy file whose rows are appended; the header is written last, with the count."""

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple):
        self.path, self.dtype, self.row_shape, self.rows = path, dtype, row_shape, 0
        self.file = open(path, "wb")
        self.file.write(b"\0" * HEADER)

    def append(self, array: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(array, self.dtype).tobytes())
        self.rows += len(array)

    def close(self) -> dict:
        self.file.seek(0)
        self.file.write(_npy_header(self.dtype, (self.rows, *self.row_shape)))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return {"file": self.path.name, "bytes": self.path.stat().st_size, "digest": file_digest(self.path)}


def _exchange(tmp: Path, target: Path) -> None:
    """Put `tmp` at `target` in one step; an existing target ends up at `tmp`. Linux's
    renameat2(RENAME_EXCHANGE) swaps atomically; elsewhere the old target is moved aside
    first (a crash between the two renames leaves it there, named .old-...)."""
    if not target.exists():
        os.rename(tmp, target)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if hasattr(libc, "renameat2"):
        at_fdcwd, rename_exchange = -100, 2
        if libc.renameat2(at_fdcwd, bytes(tmp), at_fdcwd, bytes(target), rename_exchange) == 0:
            return
    aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(target, aside)
    os.rename(tmp, target)
    os.rename(aside, tmp)


def _swap_in(tmp: Path, target: Path) -> None:
    """The directory `tmp` (its files already fsynced) durably at `target`, in one step; `tmp`
    is then gone (with the old target, if there was one)."""
    try:
        sync_path(tmp)
        _exchange(tmp, target)
        sync_path(target.parent)
    finally:
        _remove(tmp)


class GalleryWriter:
    """`with GalleryWriter(path, ...) as w: w.add(...); ...` writes the gallery directory `path`
    on leaving the block (commit), or nothing if the block raised. `set_shape`: (K+1, D);
    `dtype`: "float16", or "int8" (8-bit sets with a per-row scale)."""

    def __init__(self, path: str | os.PathLike, set_shape: tuple[int, int], fingerprint: str, alpha: float,
                 weight: float, root: str = "", cameras: list[str] = (), margin: bool = False,
                 segment_size: int = SEGMENT_SIZE, dtype: str = "float16"):
        if segment_size < 1 or dtype not in SET_DTYPES:
            raise ValueError(f"segment size {segment_size} and dtype {dtype!r}: need >= 1 and one of {list(SET_DTYPES)}")
        cameras = list(cameras)
        if not all(isinstance(c, str) and c for c in cameras) or len(set(cameras)) != len(cameras):
            raise GalleryError(f"{path}: cameras must be distinct non-empty names, got {cameras!r}")
        self.path, self.set_shape, self.segment_size = Path(path), tuple(int(x) for x in set_shape), segment_size
        self.manifest = {"format": FORMAT, "version": VERSION, "fingerprint": str(fingerprint),
                         "alpha": float(alpha), "weight": float(weight), "root": str(root), "cameras": cameras,
                         "items": 0, "set_shape": list(self.set_shape), "dtype": dtype, "margin": bool(margin),
                         "segment_size": segment_size, "segments": []}
        self.set_dtype = np.dtype(SET_DTYPES[dtype])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{uuid.uuid4().hex[:8]}")
        self.tmp.mkdir()
        self.db = sqlite3.connect(self.tmp / PATHS_DB)
        self.db.execute("PRAGMA journal_mode=OFF")  # a temporary file: made durable by the fsync before the rename
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE items (idx INTEGER PRIMARY KEY, path TEXT NOT NULL)")
        self.sets = self.items = self.scale = None
        self.zone: tuple[set, int, int] | None = None

    def __enter__(self) -> GalleryWriter:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()

    def add(self, sets, ids, paths: list[str], margin=None, camera=None, time=None, scale=None) -> None:
        """Append items: sets [B, K+1, D], person ids [B], paths; margin [B] (a gallery with a
        margin), camera indices [B] and times [B] (ms; None: unknown); `scale` [B, K+1]: the sets
        are int8 codes with these row scales (an 8-bit gallery only)."""
        sets = torch.as_tensor(sets).detach().cpu()
        b, n = len(paths), self.manifest["items"]
        where = f"{self.path} (items {n}..{n + b - 1})"
        if tuple(sets.shape) != (b, *self.set_shape):
            raise GalleryError(f"{where}: sets must be [{b}, {', '.join(map(str, self.set_shape))}], got "
                               f"{list(sets.shape)}")
        if self.manifest["dtype"] != SCALED and scale is not None:
            raise GalleryError(f"{where}: a scale goes with int8 sets; this gallery stores {self.manifest['dtype']}")
        if self.manifest["dtype"] == SCALED:
            if scale is None:
                sets, scale = quantize_sets(sets.float())
            try:
                check_scale(sets, scale := torch.as_tensor(scale).detach().cpu())
            except ValueError as e:
                raise GalleryError(f"{where}: {e}") from None
        if not all(isinstance(p, str) for p in paths):
            raise GalleryError(f"{where}: paths must be strings")
        rows = np.empty(b, ITEM_DTYPE)
        for name, values, default in (("person", ids, None), ("camera", camera, NO_CAMERA), ("time", time, NO_TIME),
                                      ("margin", margin, 0.0)):
            if values is None and default is None:
                raise GalleryError(f"{where}: person ids are required")
            array = np.full(b, default) if values is None else torch.as_tensor(values).detach().cpu().numpy()
            if array.shape != (b,):
                raise GalleryError(f"{where}: {name} must be [{b}], got {list(array.shape)}")
            rows[name] = array
        if (margin is not None) != self.manifest["margin"]:
            raise GalleryError(f"{where}: a margin for every item or for none (this gallery: "
                               f"{'with' if self.manifest['margin'] else 'without'})")
        cameras = len(self.manifest["cameras"])
        if b and not (NO_CAMERA <= rows["camera"].min() and rows["camera"].max() < cameras):
            raise GalleryError(f"{where}: camera indices must be -1 or below {cameras}")
        with self.db:  # one transaction per batch (autocommit would make each row one)
            self.db.executemany("INSERT INTO items VALUES (?, ?)", zip(range(n, n + b), paths))
        sets = sets.numpy() if scale is not None else sets.to(torch.float16).numpy()
        scale = None if scale is None else scale.numpy()
        done = 0
        while done < b:
            if self.sets is None:
                self._open_segment()
            take = min(b - done, self.segment_size - self.sets.rows)
            self._write(sets[done:done + take], rows[done:done + take],
                        None if scale is None else scale[done:done + take])
            done += take
            if self.sets.rows == self.segment_size:
                self._close_segment()
        self.manifest["items"] = n + b

    def _open_segment(self) -> None:
        name = f"{len(self.manifest['segments']):06d}"
        self.sets = _Column(self.tmp / f"{name}.sets.npy", self.set_dtype, self.set_shape)
        self.items = _Column(self.tmp / f"{name}.items.npy", ITEM_DTYPE, ())
        if self.manifest["dtype"] == SCALED:
            self.scale = _Column(self.tmp / f"{name}.scale.npy", np.dtype(np.float32), self.set_shape[:1])
        self.zone = (set(), None, None)

    def _write(self, sets: np.ndarray, rows: np.ndarray, scale: np.ndarray | None) -> None:
        self.sets.append(sets)
        self.items.append(rows)
        if scale is not None:
            self.scale.append(scale)
        cams, lo, hi = self.zone
        cams.update(np.unique(rows["camera"]).tolist())
        known = rows["time"][rows["time"] != NO_TIME]
        if known.size:
            lo = int(known.min()) if lo is None else min(lo, int(known.min()))
            hi = int(known.max()) if hi is None else max(hi, int(known.max()))
        self.zone = (cams, lo, hi)

    def _close_segment(self) -> None:
        cams, lo, hi = self.zone
        first = sum(s["count"] for s in self.manifest["segments"])
        segment = {"first": first, "count": self.sets.rows, "cameras": sorted(cams),
                   "time": None if lo is None else [lo, hi], "sets": self.sets.close(), "items": self.items.close()}
        if self.scale is not None:
            segment["scale"] = self.scale.close()
        self.manifest["segments"].append(segment)
        self.sets = self.items = self.scale = None

    def commit(self) -> Path:
        """Finish the last segment and the manifest, make it all durable, swap it in."""
        try:
            if self.sets is not None:
                self._close_segment()
            if not self.manifest["items"]:
                raise GalleryError(f"{self.path}: a gallery needs at least one item")
            self.db.close()
            sync_path(self.tmp / PATHS_DB)
            self.manifest["paths"] = {"file": PATHS_DB, "bytes": (self.tmp / PATHS_DB).stat().st_size,
                                      "digest": file_digest(self.tmp / PATHS_DB)}
            with open(self.tmp / MANIFEST, "w") as f:
                json.dump(self.manifest, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            _swap_in(self.tmp, self.path)
        finally:
            self.abort()  # what is left open, and the temporary directory if the swap did not happen
        return self.path

    def abort(self) -> None:
        for column in (self.sets, self.items, self.scale):
            if column is not None:
                column.file.close()
        self.db.close()
        _remove(self.tmp)


def copy_items(g: Gallery, writer: GalleryWriter, start: int = 0, stop: int | None = None) -> None:
    """Stream items start .. stop - 1 of `g` into `writer`, a segment slice at a time (never
    more than COPY_ROWS items in memory)."""
    stop = len(g) if stop is None else stop
    for seg in g.segments:
        lo, hi = max(start, seg.first), min(stop, seg.first + seg.count)
        if lo >= hi:
            continue
        sets, scale = seg.sets(), seg.scale()
        if sets.is_meta:
            raise ValueError(f"{g.location}: loaded without its sets (with_sets=False): nothing to copy")
        for a in range(lo, hi, COPY_ROWS):
            b = min(a + COPY_ROWS, hi)
            writer.add(sets[a - seg.first:b - seg.first], g.ids[a:b], g.paths[a:b],
                       None if g.margin is None else g.margin[a:b], g.camera[a:b], g.time[a:b],
                       None if scale is None else scale[a - seg.first:b - seg.first])


def rewrite_gallery(g: Gallery, out: str | os.PathLike, start: int = 0, stop: int | None = None,
                    segment_size: int = SEGMENT_SIZE) -> Path:
    """Items start .. stop - 1 of `g` (any version) as a new gallery directory `out` (every
    camera name kept, so camera indices stay valid; 8-bit sets stay 8-bit, copied as they are)."""
    with GalleryWriter(out, g.set_shape, g.fingerprint, g.alpha, g.weight, g.root, g.cameras, g.margin is not None,
                       segment_size, g.dtype) as w:
        copy_items(g, w, start, stop)
    return Path(out)


def install_gallery(g: Gallery, target: str | os.PathLike) -> Path:
    """The gallery `g` as the directory `target`, atomically: a version-3 gallery's files
    hard-linked where the filesystem allows (gallery files are never written in place, so a
    link is as good as a copy, and free at any size), else copied; a version 1 or 2 file
    converted (rewrite_gallery)."""
    target = Path(target)
    if g.location is None or not Path(g.location).is_dir():
        return rewrite_gallery(g, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        # the listed files, and the segments' ANN indexes where built (export/ann_index.py: optional)
        for f in gallery_files(Path(g.location)) + sorted(Path(g.location).glob("*.ann.*.faiss")):
            try:
                os.link(f, tmp / f.name)
            except OSError:  # another filesystem, or no links there
                shutil.copyfile(f, tmp / f.name)
                sync_path(tmp / f.name)
    except BaseException:
        _remove(tmp)
        raise
    _swap_in(tmp, target)
    return target
