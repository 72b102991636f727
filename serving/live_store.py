"""The durable part of a live gallery, without torch: SQLite in WAL mode (synchronous=FULL) and
safetensors segments, so the server's ingest and erasure processes start light.

    FOLDER/live.sqlite                   meta: what it is and which gallery file it extends
                                         cameras: every camera name, in order (an item's camera is its idx)
                                         items: every item, the base file's (segment NULL) and each added one
                                         erased: the idx of every erased item
    FOLDER/segments/<first idx>.safetensors   the float16 sets [B, K+1, D] of one `add`

Indices are stable: the base file's items are 0 .. N-1 and each added item takes the next one.
`add` holds SQLite's write lock while it writes its segment (temporary name, fsync, rename, fsync
of the folder) and commits its rows, so a call is all of its rows or none; what returned is on
disk, and a segment whose rows never committed is deleted by the next adder to open the
folder. One process adds (indices and segment names come from the table under that lock, but
only the adder deletes stray segments); any process erases, in one transaction. A version
replaced by a newer one (serving.repository.publish_gallery) is sealed: later adds and erasures
there are refused (GalleryReplaced), not acknowledged into a gallery no longer served.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from export.gallery_meta import NO_CAMERA, NO_TIME, parse_time

DB_NAME, SEGMENTS = "live.sqlite", "segments"
GALLERY_FILE, LIVE_FOLDER = "gallery.safetensors", "live"  # a served gallery version: the file, its live state
FORMAT, VERSION = "tbps-live-gallery", "1"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cameras (idx INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS items (idx INTEGER PRIMARY KEY, segment TEXT, row INTEGER NOT NULL, path TEXT NOT NULL,
                                  person INTEGER NOT NULL, camera INTEGER NOT NULL, time INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS items_path ON items (path);
CREATE INDEX IF NOT EXISTS items_person ON items (person);
CREATE TABLE IF NOT EXISTS erased (idx INTEGER PRIMARY KEY);
"""
LIVE = "idx NOT IN (SELECT idx FROM erased)"
CHUNK = 500  # values bound per SQL statement (SQLite's limit is in the thousands)
SEALED = "sealed"  # meta key, present once a newer gallery version replaced this one


class GalleryReplaced(RuntimeError):
    """An add or erase reached a gallery version that a newer one replaced: nothing changed."""


def _chunks(values: list):
    for start in range(0, len(values), CHUNK):
        yield values[start:start + CHUNK]


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


class LiveStore:
    def __init__(self, folder: str | os.PathLike, fingerprint: str | None = None, adder: bool = False):
        """Open the live gallery in `folder` (written by `create`); with `fingerprint`, one of
        another checkpoint is refused. `adder`: this process is the one that adds."""
        self.folder, self.adder = Path(folder), adder
        if not (self.folder / DB_NAME).is_file():
            raise FileNotFoundError(f"{self.folder}: no live gallery here (the model repository writes one beside "
                                    f"each gallery version: tbps repo)")
        self.db = sqlite3.connect(self.folder / DB_NAME, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a commit that returned survives a power cut
        self.meta = dict(self.db.execute("SELECT key, value FROM meta"))
        if self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            raise ValueError(f"{self.folder}: not a {FORMAT} version {VERSION} folder (meta {self.meta})")
        if fingerprint is not None and self.meta["fingerprint"] != fingerprint:
            raise ValueError(f"{self.folder}: the live gallery of checkpoint {self.meta['fingerprint']}, not of "
                             f"{fingerprint}")
        self.base_items = int(self.meta["base_items"])
        if adder:
            committed = {s for (s,) in self.db.execute("SELECT DISTINCT segment FROM items WHERE segment IS NOT NULL")}
            for stale in set(os.listdir(self.folder / SEGMENTS)) - committed:
                (self.folder / SEGMENTS / stale).unlink()  # written, never committed: never acknowledged

    @classmethod
    def create(cls, folder: str | os.PathLike, fingerprint: str, paths: list[str], persons, cameras: list[str],
               camera, time, adder: bool = False) -> LiveStore:
        """Start the live gallery of a gallery file's items in `folder` and open it (opened as
        it is where it was started for the same items; refused where it was started for others)."""
        folder = Path(folder)
        (folder / SEGMENTS).mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(folder / DB_NAME, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            want = {"format": FORMAT, "version": VERSION, "fingerprint": fingerprint, "base_items": str(len(paths)),
                    "base_cameras": str(len(cameras))}
            with _transaction(db):
                found = {k: v for k, v in db.execute("SELECT key, value FROM meta") if k != SEALED}
                if not found:
                    db.executemany("INSERT INTO meta VALUES (?, ?)", want.items())
                    db.executemany("INSERT INTO cameras VALUES (?, ?)", enumerate(cameras))
                    db.executemany("INSERT INTO items VALUES (?, NULL, ?, ?, ?, ?, ?)",
                                   ((i, i, p, int(person), int(c), int(t))
                                    for i, (p, person, c, t) in enumerate(zip(paths, persons, camera, time))))
                else:
                    names = [n for (n,) in db.execute("SELECT name FROM cameras WHERE idx < ? ORDER BY idx",
                                                      (len(cameras),))]
                    if found != want or names != list(cameras):
                        raise ValueError(f"{folder} holds the live gallery of another gallery file ({found.get('base_items')} "
                                         f"items, checkpoint {found.get('fingerprint')}), not of this one "
                                         f"({len(paths)} items, checkpoint {fingerprint})")
        finally:
            db.close()
        return cls(folder, fingerprint, adder)

    def transaction(self, write: bool = False):
        return _transaction(self.db, "IMMEDIATE" if write else "")

    def data_version(self) -> int:
        """Changes whenever another connection committed: a reader's cheap 'anything new?'."""
        return self.db.execute("PRAGMA data_version").fetchone()[0]

    def read_since(self, items: int, cameras: int, erased: int) -> tuple[list[str], list[tuple], list[int]]:
        """Inside a transaction: camera names from `cameras` on, items from `items` on (segment,
        row, path, person, camera, time, by idx) and every erased idx, or none while there are
        still `erased` of them (erasure is final: the same count is the same set)."""
        names = [n for (n,) in self.db.execute("SELECT name FROM cameras WHERE idx >= ? ORDER BY idx", (cameras,))]
        rows = self.db.execute("SELECT segment, row, path, person, camera, time FROM items WHERE idx >= ? "
                               "ORDER BY idx", (items,)).fetchall()
        if self.db.execute("SELECT COUNT(*) FROM erased").fetchone()[0] == erased:
            return names, rows, []
        return names, rows, [i for (i,) in self.db.execute("SELECT idx FROM erased")]

    def segment_path(self, segment: str) -> Path:
        return self.folder / SEGMENTS / segment

    def paths(self, indices) -> list[str]:
        """The paths of items `indices` (base or added, erased or not), in that order."""
        indices = [int(i) for i in indices]
        found = {}
        for chunk in _chunks(sorted(set(indices))):
            found.update(self.db.execute(f"SELECT idx, path FROM items WHERE idx IN ({','.join('?' * len(chunk))})",
                                         chunk))
        missing = sorted(set(indices) - found.keys())
        if missing:
            raise IndexError(f"{self.folder}: no item {missing[0]} in this live gallery")
        return [found[i] for i in indices]

    def taken(self, paths: list[str]) -> set[str]:
        """Which of `paths` a live item has."""
        found = set()
        for chunk in _chunks(list(paths)):
            found |= {p for (p,) in self.db.execute(
                f"SELECT path FROM items WHERE path IN ({','.join('?' * len(chunk))}) AND {LIVE}", chunk)}
        return found

    def add(self, sets: np.ndarray, paths: list[str], persons=None, cameras=None, times=None) -> list[int]:
        """Append items (sets [B, K+1, D]; person ids, camera names and ISO 8601 times optional,
        None or "" for unknown, a new camera name is recorded); their indices, once on disk. A
        path a live item has is refused, as is a call that repeats one."""
        if not self.adder:
            raise RuntimeError("this live gallery was opened to read: one process adds (opened with adder=True)")
        n = len(paths)
        persons = [-1] * n if persons is None else [int(p) for p in persons]
        cameras, times = list(cameras or [None] * n), list(times or [None] * n)
        if sets.ndim != 3 or sets.shape[0] != n or not len(persons) == len(cameras) == len(times) == n:
            raise ValueError(f"expected {n} sets [{n}, K+1, D] with as many paths, persons, cameras and times, "
                             f"got sets {list(sets.shape)}")
        stamps = [NO_TIME if not t else parse_time(t) for t in times]
        with self.transaction(write=True):
            self._refuse_if_sealed()
            taken = sorted(self.taken(paths)) or sorted({p for p in paths if paths.count(p) > 1})
            if taken:
                raise ValueError(f"already in the gallery: {taken[:3]}")
            names = dict((name, i) for i, name in self.db.execute("SELECT idx, name FROM cameras"))
            new = [c for c in dict.fromkeys(c for c in cameras if c) if c not in names]
            self.db.executemany("INSERT INTO cameras VALUES (?, ?)", [(len(names) + i, c) for i, c in enumerate(new)])
            names.update((c, len(names) + i) for i, c in enumerate(new))
            first = self.db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM items").fetchone()[0]
            segment = f"{first:012d}.safetensors"
            _fsync_write({"sets": np.ascontiguousarray(sets, dtype=np.float16)}, self.segment_path(segment))
            try:
                self.db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?)", [
                    (first + r, segment, r, p, persons[r], names[cameras[r]] if cameras[r] else NO_CAMERA, stamps[r])
                    for r, p in enumerate(paths)])
            except BaseException:
                self.segment_path(segment).unlink(missing_ok=True)
                raise
        return list(range(first, first + n))

    def erase(self, paths=(), persons=()) -> list[int]:
        """Erase the live items with these paths or person ids, durably; their indices (none:
        nothing matched, nothing changed)."""
        hit = set()
        with self.transaction(write=True):
            self._refuse_if_sealed()
            for column, values in (("path", [str(p) for p in paths]), ("person", [int(p) for p in persons])):
                for chunk in _chunks(values):
                    hit |= {i for (i,) in self.db.execute(
                        f"SELECT idx FROM items WHERE {column} IN ({','.join('?' * len(chunk))}) AND {LIVE}", chunk)}
            self.db.executemany("INSERT INTO erased VALUES (?)", [(i,) for i in sorted(hit)])
        return sorted(hit)

    def seal(self) -> tuple[int, int]:
        """(items added, items erased) here; where both are 0, every later add and erase is
        refused, decided in one write transaction (so none can slip in between)."""
        with self.transaction(write=True):
            changes = (self.db.execute("SELECT COUNT(*) FROM items WHERE segment IS NOT NULL").fetchone()[0],
                       self.db.execute("SELECT COUNT(*) FROM erased").fetchone()[0])
            if changes == (0, 0):
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, '1')", (SEALED,))
            return changes

    def unseal(self) -> None:
        with self.transaction(write=True):
            self.db.execute("DELETE FROM meta WHERE key = ?", (SEALED,))

    def _refuse_if_sealed(self) -> None:
        if self.db.execute("SELECT 1 FROM meta WHERE key = ?", (SEALED,)).fetchone():
            raise GalleryReplaced(f"{self.folder}: a newer gallery version replaced this one while the call ran; "
                                  f"nothing was changed: send it again")

    def live_items(self) -> int:
        # idx is 0 .. n-1 and every erased idx is an item's: no scan of items against erased
        return self.db.execute("SELECT (SELECT COALESCE(MAX(idx) + 1, 0) FROM items) - "
                               "(SELECT COUNT(*) FROM erased)").fetchone()[0]

    def close(self) -> None:
        self.db.close()


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection, mode: str = ""):
    """One transaction, explicit: connections autocommit (isolation_level=None, so a reader
    takes its own snapshot), and there `with connection:` would commit each statement."""
    db.execute(f"BEGIN {mode}")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
