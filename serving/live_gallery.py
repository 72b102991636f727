"""A live gallery: a gallery file plus durable additions and erasures, searched as one gallery.

The durable part is serving/live_store.py's (SQLite and safetensors segments, torch-free: the
server's ingest and erasure processes use it alone); this is the searchable part: the base
file's tensors and every committed addition's, with an `alive` mask, on the search's device.
Searches `refresh` before each query, which costs one PRAGMA when nothing changed, so an item
is searchable everywhere once its `add` returned, and gone once its `erase` returned.
Erased items stay in memory, hidden from every search by the `alive` mask, until `compact`
writes base + additions - erasures as one gallery file (indices renumbered in order, so it
ranks exactly as the live gallery did).

Added images have no adaptive margin (it needs the training captions): where the base has
one, theirs is 0.
"""
from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path

import torch
from safetensors.torch import load_file

from export.gallery import Gallery, load_gallery, save_gallery
from export.gallery_meta import allowed_items
from serving.live_store import LiveStore


def start_live(folder: str | os.PathLike, gallery: Gallery, adder: bool = False) -> LiveStore:
    """The live store of a gallery's items in `folder` (LiveStore.create: started once, reopened
    after)."""
    g = gallery
    return LiveStore.create(folder, g.fingerprint, g.paths, g.ids.tolist(), g.cameras, g.camera.tolist(),
                            g.time.tolist(), adder)


class _Rows:
    """A growing [capacity, ...] tensor: appends are amortised O(rows), `view` is [:n]."""

    def __init__(self, first: torch.Tensor):
        self.data, self.n = first, first.shape[0]  # the first append past it copies: `first` is never written

    def reserve(self, capacity: int) -> None:
        """Room for `capacity` rows: the only allocation an append makes (it may fail, changing nothing)."""
        if capacity > self.data.shape[0]:
            grown = self.data.new_empty((max(2 * self.data.shape[0], capacity), *self.data.shape[1:]))
            grown[:self.n] = self.data[:self.n]
            self.data = grown

    def append(self, rows: torch.Tensor) -> None:
        self.reserve(self.n + rows.shape[0])
        self.data[self.n:self.n + rows.shape[0]] = rows
        self.n += rows.shape[0]

    def view(self) -> torch.Tensor:
        return self.data[:self.n]


class LiveGallery:
    def __init__(self, folder: str | os.PathLike, base: str | os.PathLike, fingerprint: str | None = None,
                 writer: bool = True, sets: str | torch.device | None = "cpu", dtype: torch.dtype = torch.float16):
        """Open (or start) the live gallery in `folder` over the gallery file `base`; one
        started for another file is refused. `writer`: the one process that adds. `sets`: the
        device the embedding sets are kept on, in `dtype` (None: not loaded)."""
        self.folder, self.base_path = Path(folder), Path(base)
        self.base: Gallery = load_gallery(self.base_path, fingerprint, with_sets=sets is not None)
        b = self.base
        self.store = start_live(folder, b, adder=writer)
        self.lock, self.writer = threading.Lock(), writer
        self.set_shape = tuple(b.sets.shape[1:])
        self.cameras = list(b.cameras)
        self.sets = None if sets is None else _Rows(b.sets.to(sets, dtype))
        self.ids, self.camera, self.time = _Rows(b.ids), _Rows(b.camera), _Rows(b.time)
        self.margin = None if b.margin is None or sets is None else _Rows(b.margin.to(sets))
        self.alive = _Rows(torch.ones(len(b), dtype=torch.bool))
        self.hidden = 0  # items erased: while 0, a search without a filter needs no mask
        self.paths = list(b.paths)
        self._version = None
        self.refresh()

    def refresh(self, own: bool = False) -> set[str]:
        """Take in what was committed since this object last looked (by another process, or
        everything on open; `own`: by this one too), from one consistent snapshot; the
        segments taken in. Cheap when nothing changed: SQLite's data_version says so without
        reading a table (it counts other connections' commits only)."""
        version = self.store.data_version()
        if version == self._version and not own:
            return set()
        with self.lock:
            with self.store.transaction():  # one read snapshot: items, names and erasures agree
                cams, rows, erased = self.store.read_since(len(self.paths), len(self.cameras), self.hidden)
            self.cameras.extend(cams)
            segments = set()
            for segment, group in itertools.groupby(rows, key=lambda r: r[0]):  # one add call's rows, in order
                _, _, paths, persons, cameras, times = zip(*group)
                sets = None if self.sets is None else load_file(self.store.segment_path(segment))["sets"]
                self._append(sets, list(paths), persons, cameras, times)
                segments.add(segment)
            self._hide(erased)
            self._version = version  # only now: a refresh that failed (out of memory) is retried in full by the next
            return segments

    def _hide(self, erased) -> None:
        for i in erased:
            if self.alive.data[i]:
                self.alive.data[i] = False
                self.hidden += 1

    def _append(self, sets, paths, persons, cameras, times) -> None:
        """All or nothing: every allocation (the new rows, each column's growth) comes before the
        first write, so an out-of-memory error leaves the columns as they were, of one length."""
        columns = [(self.ids, torch.tensor(persons, dtype=torch.int64)),
                   (self.camera, torch.tensor(cameras, dtype=torch.int32)),
                   (self.alive, torch.ones(len(paths), dtype=torch.bool))]
        if self.sets is not None:
            columns.append((self.sets, sets.to(self.sets.data.device, self.sets.data.dtype)))
        if self.margin is not None:
            columns.append((self.margin, torch.zeros(len(paths), device=self.margin.data.device)))
        columns.append((self.time, torch.tensor(times, dtype=torch.int64)))
        for column, rows in columns:
            column.reserve(column.n + len(rows))
        for column, rows in columns:
            column.append(rows)
        self.paths.extend(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def live_items(self) -> int:
        return len(self) - self.hidden

    def add(self, sets: torch.Tensor, paths: list[str], persons=None, cameras=None, times=None) -> list[int]:
        """Append items (LiveStore.add: sets [B, K+1, D], optional person ids, camera names and
        ISO 8601 times); their indices, once on disk and searchable here."""
        if tuple(sets.shape[1:]) != self.set_shape:
            raise ValueError(f"expected sets of shape [B, {', '.join(map(str, self.set_shape))}], got {list(sets.shape)}")
        if not self.writer:
            raise RuntimeError("this live gallery was opened to read: one process writes")
        indices = self.store.add(sets.detach().cpu().to(torch.float16).numpy(), list(paths), persons, cameras, times)
        self.refresh(own=True)
        return indices

    def erase(self, paths=(), persons=()) -> list[int]:
        """Hide the live items with these paths or person ids from every later search, durably;
        the indices erased (none: nothing matched, nothing changed). Any process may erase."""
        hit = self.store.erase(paths, persons)
        self.refresh(own=True)
        return hit

    def allowed(self, cameras=None, since=None, until=None) -> torch.Tensor:
        """The live items a query's filter keeps: kernels.search's `allowed` mask."""
        mask = allowed_items(self.cameras, self.camera.view(), self.time.view(), cameras, since, until)
        return self.alive.view() if mask is None else mask & self.alive.view()

    def compact(self, out: str | os.PathLike) -> dict:
        """Write base + additions - erasures as one gallery file `out`; what it kept and dropped."""
        if self.sets is None:
            raise RuntimeError("this live gallery was opened without its sets (sets=None): nothing to compact")
        self.refresh()
        with self.lock:
            keep = self.alive.view().nonzero().squeeze(1)
            b = self.base
            save_gallery(out, self.sets.view()[keep], self.ids.view()[keep], [self.paths[i] for i in keep.tolist()],
                         b.fingerprint, b.alpha, b.weight, None if self.margin is None else self.margin.view()[keep],
                         b.root, self.cameras, self.camera.view()[keep], self.time.view()[keep])
            return {"gallery": str(out), "kept": int(keep.numel()), "dropped": len(self) - int(keep.numel()),
                    "added": len(self) - len(b)}

    def close(self) -> None:
        self.store.close()
