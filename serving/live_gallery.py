"""A live gallery: a gallery file plus durable additions and erasures, searched as one gallery.

    FOLDER/live.sqlite             SQLite in WAL mode, synchronous=FULL: items added, erasures,
                                   camera names added, and which base gallery they apply to
    FOLDER/segments/<idx>.safetensors   the embedding sets of one call to `add`

Indices are stable: the base gallery's items are 0 .. N-1 and every added item takes the next
one, so a hit's index names one image until compaction. `add` writes its segment (temporary
name, fsync, rename, fsync of the folder) and then commits its rows in one transaction;
`erase` commits its rows. A call that returned is on disk: a `kill -9` after it loses
nothing, and a segment whose transaction never committed is deleted on the next open.
One process writes (the server's ingest); searches in other processes open it to read and
`refresh` before each query, which costs one PRAGMA when nothing changed, so an item is
searchable everywhere once its `add` returned.
Erased items stay in memory, hidden from every search by the `alive` mask, until `compact`
writes base + additions - erasures as one gallery file (indices renumbered in order, so it
ranks exactly as the live gallery did).

Added images have no adaptive margin (it needs the training captions): where the base has
one, theirs is 0.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import threading
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from export.gallery import Gallery, load_gallery, save_gallery
from export.gallery_meta import NO_CAMERA, NO_TIME, allowed_items, parse_time

DB_NAME, SEGMENTS = "live.sqlite", "segments"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cameras (idx INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS items (idx INTEGER PRIMARY KEY, segment TEXT NOT NULL, row INTEGER NOT NULL,
                                  path TEXT NOT NULL, person INTEGER NOT NULL, camera INTEGER NOT NULL,
                                  time INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS erased (idx INTEGER PRIMARY KEY);
"""


def _fsync_write(tensors: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself
    finally:
        os.close(fd)


class _Rows:
    """A growing [capacity, ...] tensor: appends are amortised O(rows), `view` is [:n]."""

    def __init__(self, first: torch.Tensor):
        self.data, self.n = first, first.shape[0]  # the first append past it copies: `first` is never written

    def append(self, rows: torch.Tensor) -> None:
        if self.n + rows.shape[0] > self.data.shape[0]:
            grown = self.data.new_empty((max(2 * self.data.shape[0], self.n + rows.shape[0]), *self.data.shape[1:]))
            grown[:self.n] = self.data[:self.n]
            self.data = grown
        self.data[self.n:self.n + rows.shape[0]] = rows
        self.n += rows.shape[0]

    def view(self) -> torch.Tensor:
        return self.data[:self.n]


class LiveGallery:
    def __init__(self, folder: str | os.PathLike, base: str | os.PathLike, fingerprint: str | None = None,
                 writer: bool = True):
        """Open (or start) the live gallery in `folder` over the gallery file `base`; additions
        and erasures recorded against another base are refused. One process writes; readers
        (writer=False: searches in other processes) take its commits in with `refresh`."""
        self.folder, self.base_path = Path(folder), Path(base)
        self.base: Gallery = load_gallery(self.base_path, fingerprint)
        (self.folder / SEGMENTS).mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.folder / DB_NAME, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a commit that returned survives a power cut
        self.db.executescript(SCHEMA)
        self.lock, self.writer = threading.Lock(), writer
        self._bind_base()
        b = self.base
        self.cameras = list(b.cameras)
        self.sets, self.ids = _Rows(b.sets), _Rows(b.ids)
        self.camera, self.time = _Rows(b.camera), _Rows(b.time)
        self.margin = None if b.margin is None else _Rows(b.margin)
        self.alive = _Rows(torch.ones(len(b), dtype=torch.bool))
        self.paths = list(b.paths)
        self.where = {p: i for i, p in enumerate(self.paths)}
        self._version = None
        segments = self.refresh()
        if writer:
            for stale in set(os.listdir(self.folder / SEGMENTS)) - segments:
                (self.folder / SEGMENTS / stale).unlink()  # written, never committed: never acknowledged

    @contextlib.contextmanager
    def _transaction(self):
        """One write transaction. Explicit: the connection autocommits (isolation_level=None, so
        reads can take their own snapshot), and there `with connection:` would commit each row."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _bind_base(self) -> None:
        want = {"fingerprint": self.base.fingerprint, "base_items": str(len(self.base)),
                "base_cameras": ",".join(self.base.cameras)}
        with self._transaction():
            self.db.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)", want.items())
        found = dict(self.db.execute("SELECT key, value FROM meta"))
        if found != want:
            raise ValueError(f"{self.folder} holds the additions and erasures of another gallery "
                             f"({found['base_items']} items, checkpoint {found['fingerprint']}), not of "
                             f"{self.base_path} ({len(self.base)} items, checkpoint {self.base.fingerprint})")

    def refresh(self) -> set[str]:
        """Take in what was committed since this object last looked (by another process, or
        everything on open), from one consistent snapshot; the segments taken in. Cheap when
        nothing changed: SQLite's data_version says so without reading a table."""
        version = self.db.execute("PRAGMA data_version").fetchone()[0]
        if version == self._version:
            return set()
        with self.lock:
            self.db.execute("BEGIN")  # one read snapshot: items, names and erasures agree
            try:
                cams = self.db.execute("SELECT name FROM cameras WHERE idx >= ? ORDER BY idx",
                                       (len(self.cameras),)).fetchall()
                rows = self.db.execute("SELECT segment, path, person, camera, time FROM items WHERE idx >= ? "
                                       "ORDER BY idx", (len(self.paths),)).fetchall()
                erased = [i for (i,) in self.db.execute("SELECT idx FROM erased")]
            finally:
                self.db.execute("COMMIT")
            self._version = version
            self.cameras.extend(n for (n,) in cams)
            segments = set()
            for segment, group in itertools.groupby(rows, key=lambda r: r[0]):  # one add call's rows, in order
                _, paths, persons, cameras, times = zip(*group)
                self._append(load_file(self.folder / SEGMENTS / segment)["sets"], list(paths), persons, cameras,
                             times)
                segments.add(segment)
            self._hide(erased)
            return segments

    def _hide(self, erased) -> None:
        for i in erased:
            if self.alive.data[i]:
                self.alive.data[i] = False
                if self.where.get(self.paths[i]) == i:
                    del self.where[self.paths[i]]

    def _append(self, sets, paths, persons, cameras, times) -> None:
        first = len(self.paths)
        self.sets.append(sets.to(self.sets.data.dtype))
        self.ids.append(torch.tensor(persons, dtype=torch.int64))
        self.camera.append(torch.tensor(cameras, dtype=torch.int32))
        self.time.append(torch.tensor(times, dtype=torch.int64))
        if self.margin is not None:
            self.margin.append(torch.zeros(len(paths)))
        self.alive.append(torch.ones(len(paths), dtype=torch.bool))
        self.paths.extend(paths)
        self.where.update((p, first + r) for r, p in enumerate(paths))

    def __len__(self) -> int:
        return len(self.paths)

    def _camera_index(self, name: str | None, new: dict) -> int:
        if not name:
            return NO_CAMERA
        if name in self.cameras:
            return self.cameras.index(name)
        return new.setdefault(name, len(self.cameras) + len(new))

    def add(self, sets: torch.Tensor, paths: list[str], persons=None, cameras=None, times=None) -> list[int]:
        """Append items (sets [B, K+1, D]; person ids, camera names and ISO 8601 times optional,
        None or "" for unknown); their indices, once on disk. A path already live is refused."""
        n = len(paths)
        persons = [-1] * n if persons is None else [int(p) for p in persons]
        cameras, times = cameras or [None] * n, times or [None] * n
        shape = tuple(self.sets.data.shape[1:])
        if sets.ndim != 3 or tuple(sets.shape[1:]) != shape or sets.shape[0] != n or not (
                len(persons) == len(cameras) == len(times) == n):
            raise ValueError(f"expected {n} sets of shape {list(shape)} with as many paths, persons, cameras and "
                             f"times, got sets {list(sets.shape)}")
        if not self.writer:
            raise RuntimeError("this live gallery was opened to read: one process writes")
        with self.lock:
            taken = [p for p in paths if p in self.where] or [p for p in set(paths) if paths.count(p) > 1]
            if taken:
                raise ValueError(f"already in the gallery: {taken[:3]}")
            new: dict[str, int] = {}
            cams = [self._camera_index(c, new) for c in cameras]
            stamps = [NO_TIME if not t else parse_time(t) for t in times]
            first = len(self.paths)
            segment = f"{first:012d}.safetensors"
            _fsync_write({"sets": sets.detach().cpu().to(torch.float16).contiguous()}, self.folder / SEGMENTS / segment)
            with self._transaction():  # all of the call or none of it
                self.db.executemany("INSERT INTO cameras VALUES (?, ?)", [(i, c) for c, i in new.items()])
                self.db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?)",
                                    [(first + r, segment, r, p, persons[r], cams[r], stamps[r])
                                     for r, p in enumerate(paths)])
            self.cameras.extend(new)
            self._append(sets.cpu(), list(paths), persons, cams, stamps)
            return list(range(first, first + n))

    def erase(self, paths=(), persons=()) -> list[int]:
        """Hide the live items with these paths or person ids from every later search, durably;
        the indices erased (none: nothing matched, nothing changed)."""
        if not self.writer:
            raise RuntimeError("this live gallery was opened to read: one process writes")
        with self.lock:
            hit = {self.where[p] for p in paths if p in self.where}
            if persons:
                wanted = torch.tensor([int(p) for p in persons])
                hit |= set((torch.isin(self.ids.view(), wanted) & self.alive.view()).nonzero().squeeze(1).tolist())
            with self._transaction():
                self.db.executemany("INSERT OR IGNORE INTO erased VALUES (?)", [(i,) for i in sorted(hit)])
            self._hide(hit)
            return sorted(hit)

    def allowed(self, cameras=None, since=None, until=None) -> torch.Tensor:
        """The live items a query's filter keeps: kernels.search's `allowed` mask."""
        mask = allowed_items(self.cameras, self.camera.view(), self.time.view(), cameras, since, until)
        return self.alive.view() if mask is None else mask & self.alive.view()

    def compact(self, out: str | os.PathLike) -> dict:
        """Write base + additions - erasures as one gallery file `out`; what it kept and dropped."""
        with self.lock:
            keep = self.alive.view().nonzero().squeeze(1)
            b = self.base
            save_gallery(out, self.sets.view()[keep], self.ids.view()[keep], [self.paths[i] for i in keep.tolist()],
                         b.fingerprint, b.alpha, b.weight, None if self.margin is None else self.margin.view()[keep],
                         b.root, self.cameras, self.camera.view()[keep], self.time.view()[keep])
            return {"gallery": str(out), "kept": int(keep.numel()), "dropped": len(self) - int(keep.numel()),
                    "added": len(self) - len(b)}

    def close(self) -> None:
        self.db.close()
