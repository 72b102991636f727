"""The server's audit trail: append-only JSON lines in a folder, each carrying the SHA-256 of the
line before it, so an edited, removed or reordered line breaks the chain where it happened.

Written by the server's own models (gallery_search, gallery_ingest, gallery_erase), never by
clients, and by the offline commands that change a served gallery (`tbps compact`). Every
record of one model execution is appended under an exclusive lock of the folder (several
processes, model instances, append to one chain; the lock orders them) and, by default,
fdatasync'ed before that execution's answers leave: an acknowledged search, ingest or erasure is
on disk. The sync runs after the lock is released, so writers in other processes append while
one waits on the disk, and one flush can cover several writers' lines (a sync covers every byte
of the file before it). `sync_ms` > 0 (TBPS_AUDIT_SYNC_MS) is the weaker mode: a record is in
the page cache before the answer leaves (it survives a crash of the server, kill -9 included)
and a background thread fdatasyncs within `sync_ms`: a power loss or kernel crash can lose the
records of that last window, at the chain's end (what was synced before still verifies, and
`verify` shows where the loss starts). A failed sync, in either mode, fails every later write,
so answers stop rather than go out unrecorded (Linux may drop the pages it could not write: a
later sync could succeed over that hole).

A record: {"seq", "time" (UTC), "event", "who", "via", ..., "prev"}; `prev` is the hex SHA-256
of the previous line's bytes (the first line of all: 64 zeros). Files rotate at `max_bytes`
(audit-<first seq>.jsonl), the chain running on across them. A crash can leave a torn last line;
the next writer keeps it (evidence), ends it, and appends a `torn` record naming its SHA-256 and
length, so `verify` reports the fragment and never counts it as a record. `prune` removes whole
files older than a time and appends a `prune` record naming the last removed line's hash, from
which verification of what remains starts.

What it does not protect against: someone who can write the folder and recomputes every hash
after an edit. `tbps audit verify` prints the head hash: keep it elsewhere (a ticket, a second
machine) and a rewrite shows as a different head.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainer.records import sync_path

GENESIS = "0" * 64
LOCK_FILE = ".lock"
MAX_BYTES = 64 << 20  # a file's size before the chain moves on to a new one
# one encoder for every line: json.dumps with options builds a new one per call (~1 of ~5 us a line)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _files(folder: Path) -> list[Path]:
    """The log files in chain order (by the seq their name starts at)."""
    return sorted(folder.glob("audit-*.jsonl"), key=lambda p: int(p.stem.split("-")[1]))


def _tail(path: Path) -> tuple[bytes | None, bytes]:
    """(the file's last complete line without its newline, or None; the torn bytes after it),
    read backwards from the end."""
    with path.open("rb") as f:
        end = f.seek(0, os.SEEK_END)
        start, data = end, b""
        while start > 0 and data.count(b"\n") < 2:
            start = max(0, start - 65536)
            f.seek(start)
            data = f.read(end - start)
    cut = data.rfind(b"\n")
    fragment, body = data[cut + 1:], data[:max(cut, 0)]
    if cut < 0:
        return None, fragment
    return body[body.rfind(b"\n") + 1:], fragment


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # pruned or rotated away: the head is read again
        return -1


def sync_ms_from(value: str | None) -> float:
    """TBPS_AUDIT_SYNC_MS as a number of milliseconds (unset or empty: 0, a sync per write)."""
    try:
        ms = float(value or 0)
        if not 0 <= ms <= 10_000:
            raise ValueError
    except ValueError:
        raise ValueError(f"--audit-sync-ms / TBPS_AUDIT_SYNC_MS={value!r}: expected milliseconds from 0 (every write "
                         f"synced before its answer leaves) to 10000") from None
    return ms


class AuditLog:
    """One writer (a model instance, a command) of the chain in `folder`; `sync_ms` > 0: the
    weaker mode (page cache at once, fdatasync within sync_ms; the module's docstring)."""

    def __init__(self, folder: str | os.PathLike, max_bytes: int = MAX_BYTES, sync_ms: float = 0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_bytes = max_bytes
        self.sync_ms = sync_ms
        self._lock = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        self._last = None  # (file, its size, next seq, last hash) after this writer's own append
        self._fd, self._fd_path = None, None  # the file appended to, kept open between writes
        self._fd_lock = threading.Lock()  # the background sync's fd is not closed under it
        self._dirty = threading.Event()  # appended since the background sync last started
        self._sync_error = None  # a failed sync's error: every later write raises it
        if sync_ms:
            threading.Thread(target=self._sync_later, name="audit-sync", daemon=True).start()

    @contextlib.contextmanager
    def locked(self):
        """The folder's exclusive lock: one writer (or pruner) at a time, across processes."""
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def _head(self) -> tuple[Path, int, str, list[bytes]]:
        """(the file to append to, the next seq, the previous line's hash, lines to write first:
        the end of a torn line and the record that reports it)."""
        files = _files(self.folder)
        last, fragment = None, b""
        for path in reversed(files):  # a file of a torn first line only, or empty: the one before ends the chain
            last, tail = _tail(path)
            fragment = fragment or (tail if path == files[-1] else b"")
            if last is not None:
                break
        if last is None:
            prev, seq = GENESIS, 0
        else:
            prev, seq = _line_hash(last), json.loads(last)["seq"] + 1
        path = files[-1] if files else self.folder / "audit-0.jsonl"
        if not fragment:
            if path.exists() and self._rotate(path):
                # every writer's lines in the old file reach the disk before any line of the new
                # one can: a power loss never leaves a hole in the chain (syncs run outside the lock)
                sync_path(path, data_only=True)
                path = self.folder / f"audit-{seq}.jsonl"
            return path, seq, prev, []
        with contextlib.suppress(ValueError, KeyError, TypeError):  # whole but for its newline: a record
            record = json.loads(fragment)
            if record["prev"] == prev and record["seq"] == seq:
                return path, seq + 1, _line_hash(fragment), [b""]
        torn = json.dumps({"seq": seq, "time": now_utc(), "event": "torn", "bytes": len(fragment),
                           "sha256": _line_hash(fragment), "prev": prev}, separators=(",", ":")).encode()
        return path, seq + 1, _line_hash(torn), [b"", torn]

    def write(self, records: list[dict]) -> None:
        """Append `records` (each: event, who, ...) to the chain in one locked step; return once
        they are on disk (by default) or in the page cache (sync_ms > 0)."""
        if not records:
            return
        if self._sync_error is not None:
            raise OSError(f"the audit trail's sync failed: {self._sync_error}")
        with self.locked():
            cached = self._last
            # no one appended since (the file kept open is the path's: rotation and pruning never
            # replace a file, and fstat looks up no path): the head is ours, no re-read
            if cached and self._fd_path == cached[0] and os.fstat(self._fd).st_size == cached[1] < self.max_bytes:
                path, size, seq, prev = cached
                lines = []
            else:
                (path, seq, prev, lines), size = self._head(), None
            time_ = now_utc()  # one execution's records: one time
            for r in records:
                line = _ENCODER.encode({"seq": seq, "time": time_, **r, "prev": prev}).encode()
                lines.append(line)
                prev, seq = _line_hash(line), seq + 1
            try:
                fd = self._open(path)
                written = os.write(fd, b"\n".join(lines) + b"\n")
                # appended under the lock: the size known, unless the head was just read
                self._last = (path, os.fstat(fd).st_size if size is None else size + written, seq, prev)
            except BaseException:
                self._last = None
                raise
        if self.sync_ms:
            if not self._dirty.is_set():  # set: the syncer has yet to clear it, and its pass will cover this
                self._dirty.set()  # (set() takes a lock: a fifth of a write's time, under 64 clients)
        else:  # outside the lock: others append meanwhile, and this flush may cover their lines too
            try:
                os.fdatasync(fd)
            except OSError as e:
                self._sync_error = e
                raise

    def _open(self, path: Path) -> int:
        if self._fd_path != path:
            with self._fd_lock:
                if self._fd is not None:  # the old file's lines were synced by whoever rotated it
                    os.close(self._fd)
                self._fd, self._fd_path = None, None
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._fd_path = path
        return self._fd

    def _sync_later(self) -> None:
        """The weaker mode's syncer: a write marks the log dirty; within sync_ms one fdatasync
        covers it and every write of the same window."""
        while True:
            self._dirty.wait()
            time.sleep(self.sync_ms / 1000)
            self._dirty.clear()  # a write after this is synced by this pass or marks the next
            try:
                with self._fd_lock:
                    if self._fd is not None:
                        os.fdatasync(self._fd)
            except OSError as e:
                self._sync_error = e
                return

    def _rotate(self, path: Path) -> bool:
        return _size(path) >= self.max_bytes

    def close(self) -> None:
        with self._fd_lock:
            if self._fd is not None:
                if self.sync_ms:  # what the syncer has not reached yet
                    os.fdatasync(self._fd)
                os.close(self._fd)
            self._fd, self._fd_path = None, None
        os.close(self._lock)


@dataclass
class Verified:
    records: int = 0
    head: str = GENESIS
    first_seq: int = 0
    problems: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)  # fragments a later `torn` record owns up to

    @property
    def ok(self) -> bool:
        return not self.problems


def read_records(folder: str | os.PathLike):
    """(file, line number, raw bytes) of every line in chain order."""
    for path in _files(Path(folder)):
        with path.open("rb") as f:
            for number, raw in enumerate(f, 1):
                yield path, number, raw


def verify(folder: str | os.PathLike) -> Verified:
    """Walk the chain: every line parses, follows the previous one's hash and seq; a torn
    fragment counts only as reported (by the `torn` record after it), never as a record."""
    v, prev, seq, pending = Verified(), None, None, None
    for path, number, raw in read_records(folder):
        where = f"{path.name}:{number}"
        if not raw.endswith(b"\n"):
            v.problems.append(f"{where}: the last line is torn ({len(raw)} bytes, a crash while writing): "
                              f"not a record")
            break
        line = raw[:-1]
        try:
            record = json.loads(line)
            record_prev, record_seq = record["prev"], record["seq"]
        except (ValueError, KeyError, TypeError):
            if pending is None:
                pending = (where, line)
                continue
            v.problems.append(f"{where}: not a record")
            break
        if pending is not None:  # a fragment: only a torn record right after it accounts for it
            if record.get("event") != "torn" or record.get("sha256") != _line_hash(pending[1]):
                v.problems.append(f"{pending[0]}: not a record, and no torn record accounts for it")
                break
            v.torn.append(f"{pending[0]}: {len(pending[1])} bytes torn by a crash (reported, not a record)")
            pending = None
        if prev is None:  # the first line: the chain starts at genesis, or where a prune left it
            prev, seq = record_prev, record_seq
            v.first_seq = record_seq
            if record_seq != 0 or record_prev != GENESIS:
                pruned = _prune_anchor(folder)
                if pruned != (record_seq, record_prev):
                    v.problems.append(f"{where}: the chain starts at seq {record_seq}, but no prune record "
                                      f"accounts for the lines before it")
                    break
        if record_seq != seq:
            v.problems.append(f"{where}: breaks the chain: seq {record_seq} where {seq} was expected (a line "
                              f"removed or reordered)")
            break
        if record_prev != prev:
            v.problems.append(f"{where}: breaks the chain: it does not follow the line before it (that line "
                              f"was edited)")
            break
        prev, seq = _line_hash(line), seq + 1
        v.records += 1
    if pending is not None and not v.problems:
        v.problems.append(f"{pending[0]}: not a record")
    v.head = prev or GENESIS
    return v


def _prune_anchor(folder) -> tuple[int, str] | None:
    """(first remaining seq, the hash it must follow) as the latest prune record states it."""
    anchor = None
    for _, _, raw in read_records(folder):
        if b'"event":"prune"' in raw:
            with contextlib.suppress(ValueError):
                record = json.loads(raw)
                anchor = (record["kept_from_seq"], record["kept_prev"])
    return anchor


def prune(folder: str | os.PathLike, before: str, who: str) -> dict:
    """Remove whole files whose last record is older than `before` (ISO 8601), keeping the live
    file; the chain then starts at the first kept line, as a prune record appended says."""
    folder = Path(folder)
    log = AuditLog(folder)
    try:
        with log.locked():
            files = _files(folder)
            removed = []
            for path in files[:-1]:
                last = json.loads(_tail(path)[0])
                if last["time"] >= before:
                    break
                removed.append(path)
            if not removed:
                return {"removed_files": 0, "removed_records": 0}
            kept = files[len(removed)]
            with kept.open("rb") as f:
                first = json.loads(f.readline())
            count = sum(p.read_bytes().count(b"\n") for p in removed)  # whole lines: files before the live one
        log.write([{"event": "prune", "who": who, "before": before, "kept_from_seq": first["seq"],
                    "kept_prev": first["prev"], "removed_records": count}])
        for path in removed:  # after the record: a crash in between leaves files the record already covers
            path.unlink()
        return {"removed_files": len(removed), "removed_records": count}
    finally:
        log.close()


def show(folder: str | os.PathLike, user: str | None = None, since: str | None = None):
    """The records (dicts) of `user` (the key's name, or the person a front acted for) from
    `since` (ISO 8601 UTC, as the log writes it), in chain order."""
    for _, _, raw in read_records(folder):
        with contextlib.suppress(ValueError):
            record = json.loads(raw)
            if (user is None or user in (record.get("who"), record.get("user"))) and \
                    (since is None or record["time"] >= since):
                yield record
