"""A live gallery: a gallery plus durable additions and erasures, searched as one gallery.

The durable part is serving/live_store.py's (SQLite and safetensors segments, torch-free: the
server's ingest and erasure processes use it alone); this is the searchable part, held in
blocks: one per segment of the base gallery (its sets read from the segment's memory map
straight onto the search's device, no host copy kept) and, for additions, blocks of a fixed
CHUNK_ROWS rows. Growth allocates one new block, never a copy of the gallery, so ingest needs
at most the gallery plus one chunk. Searches `refresh` before each query, which costs one
PRAGMA when nothing changed, so an item is searchable everywhere once its `add` returned, and
gone once its `erase` returned (an `alive` flag hides it until `compact`).

Each block keeps, per zone of ZONE_ROWS rows, the cameras and the time range of its items: a
filtered search reads only the zones that can match and masks only inside them. Additions are
laid out in arrival order, which for a camera feed is capture order: a time window maps to few
zones. Paths are read from the live store when hits are returned, not held in memory.

Added images have no adaptive margin (it needs the training captions): where the base has
one, theirs is 0.

An 8-bit base gallery (int8 sets with a scale per row) keeps its int8 sets and their scales in
every block, on any device (the CPU path dequantizes a block at a time, so no float copy of the
gallery exists), and additions are quantized as they are taken in (kernels.quantize_sets of the
fp16 sets the live store keeps: every process gets the same codes), so one layout and one
search variant serve base and additions alike.

Two-stage (`ann`: an ANN proxy of export/ann_index.py, `search(candidates=n)`): a base block
whose segment has an ANN index gives the union of each query's n nearest items (within the
zones the filter reads), and only those are scored exactly, by the same fused search; the alive
flags and the filter mask apply to them, so an erased or excluded item never comes back. The
base segments' sets then stay memory-mapped on the host, and only the candidates' rows go to the
search's device: the device holds additions, margins and flags, not the gallery. Blocks
without an index (additions, a segment whose index is missing or unreadable: `ann_notes` says
which) are scanned exactly. With n >= the items, it is the exact search; a search's answer says
whether it was (`Found.exact`).
"""
from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path

import torch
from safetensors.torch import load_file

import kernels
from export import ann_index
from export.gallery import Gallery, load_gallery
from export.gallery_store import SCALED
from export.gallery_meta import NO_CAMERA, NO_TIME, filter_bounds, item_mask, may_match
from export.gallery_writer import GalleryWriter
from serving.live_store import LiveStore

ZONE_ROWS = 1 << 14  # a filter's unit of skipping
CHUNK_ROWS = 1 << 16  # rows one growth allocates: 335 MB of 5 x 512 fp16 sets
HOST = {"ids": torch.int64, "camera": torch.int32, "time": torch.int64, "alive": torch.bool}


def start_live(folder: str | os.PathLike, gallery: Gallery, adder: bool = False) -> LiveStore:
    """The live store of a gallery's items in `folder` (LiveStore.create: started once, reopened
    after; the columns passed as views, read only when started)."""
    g = gallery
    return LiveStore.create(folder, g.fingerprint, g.paths, g.ids.numpy(), g.cameras, g.camera.numpy(),
                            g.time.numpy(), adder)


class _Block:
    """Items first .. first + n - 1 in columns of one capacity: `sets` (and an 8-bit gallery's
    `scale`) and `margin` on the search's device (where loaded; a two-stage gallery's base sets
    stay memory-mapped on the host), person id, camera, time and alive flag on the host; per
    zone, (camera indices, known-time span) of its items."""

    def __init__(self, first: int, columns: dict[str, torch.Tensor], n: int):
        self.first, self.columns, self.n = first, columns, n
        self.capacity = len(columns["alive"])
        self.hidden = n - int(columns["alive"][:n].sum())
        self.zones: list[tuple[frozenset, tuple[int, int] | None]] = []
        self._alive_device = None
        self.ann = None  # a base segment's ANN index (two-stage search), where it has one
        self._index_zones(0)

    def view(self, name: str) -> torch.Tensor:
        return self.columns[name][:self.n]

    def write(self, rows: dict[str, torch.Tensor], start: int, stop: int) -> None:
        """Rows start .. stop - 1 of `rows` appended (room is there: no allocation)."""
        count = stop - start
        for name, column in self.columns.items():
            column[self.n:self.n + count] = rows[name][start:stop]
        self.n += count
        self._index_zones(self.n - count)
        self._alive_device = None

    def hide(self, rows: torch.Tensor) -> None:
        self.columns["alive"][rows] = False
        self.hidden = self.n - int(self.view("alive").sum())
        self._alive_device = None

    def _index_zones(self, start: int) -> None:
        camera, time = self.view("camera"), self.view("time")
        first_zone = start // ZONE_ROWS
        del self.zones[first_zone:]
        for a in range(first_zone * ZONE_ROWS, self.n, ZONE_ROWS):
            c, t = camera[a:a + ZONE_ROWS], time[a:a + ZONE_ROWS]
            known = t[t != NO_TIME]
            self.zones.append((frozenset(torch.unique(c).tolist()) - {NO_CAMERA},
                               (int(known.min()), int(known.max())) if known.numel() else None))

    def runs(self, want: set[int] | None, lo: int | None, hi: int | None) -> list[tuple[int, int]]:
        """Row ranges (start, stop) of the zones that can hold an item passing the filter bounds."""
        if want is None and lo is None and hi is None:
            return [(0, self.n)] if self.n else []
        runs: list[tuple[int, int]] = []
        for z, (cameras, span) in enumerate(self.zones):
            if may_match(cameras, span, want, lo, hi):
                a, b = z * ZONE_ROWS, min((z + 1) * ZONE_ROWS, self.n)
                if runs and runs[-1][1] == a:  # adjacent zones: one launch
                    runs[-1] = (runs[-1][0], b)
                else:
                    runs.append((a, b))
        return runs

    def alive_on(self, device: torch.device) -> torch.Tensor:
        """The alive flags on the search's device, copied again only after they changed."""
        if self._alive_device is None:
            self._alive_device = self.view("alive").to(device)
        return self._alive_device


class Found(tuple):
    """A search's (scores, indices), and whether they are the exact search's (`exact`: False when
    an ANN index chose the candidates of some segment)."""

    def __new__(cls, scores: torch.Tensor, indices: torch.Tensor, exact: bool):
        found = super().__new__(cls, (scores, indices))
        found.exact = exact
        return found


class LiveGallery:
    def __init__(self, folder: str | os.PathLike, base: str | os.PathLike, fingerprint: str | None = None,
                 writer: bool = True, sets: str | torch.device | None = "cpu", dtype: torch.dtype = torch.float16,
                 ann: str | None = None, nprobe: int | None = None):
        """Open (or start) the live gallery in `folder` over the gallery `base`; one started
        for another gallery is refused. `writer`: the one process that adds. `sets`: the
        device the embedding sets are kept on, in `dtype` (None: not loaded; an 8-bit base keeps
        its int8 sets and scales whatever `dtype`). `ann`: the ANN proxy whose per-segment indexes
        two-stage searches use (`nprobe` IVF lists each)."""
        self.folder, self.base_path = Path(folder), Path(base)
        self.base: Gallery = load_gallery(self.base_path, fingerprint, with_sets=sets is not None)
        b = self.base
        self.store = start_live(folder, b, adder=writer)
        self.lock, self.writer = threading.Lock(), writer
        self.set_shape, self.cameras = tuple(b.set_shape), list(b.cameras)
        self.device, self.dtype = None if sets is None else torch.device(sets), dtype
        self.has_margin = b.margin is not None and sets is not None
        self.scaled = b.dtype == SCALED and sets is not None  # 8-bit: int8 sets and a "scale" column
        self.ann, self.nprobe, self.ann_notes = ann, nprobe, []
        self.blocks = [self._segment_block(s.first, s.first + s.count, s) for s in b.segments]
        for block, segment in zip(self.blocks if ann else [], b.segments):
            if segment.file is None:
                self.ann_notes.append(f"segment of items {segment.first}..: held in memory, no ANN index: "
                                      f"searched exactly")
                continue
            block.ann, why = ann_index.open_index(segment.file, ann, segment.count, self.set_shape[-1])
            if why:
                self.ann_notes.append(why)
        self.hidden = 0  # items erased
        self._version = None
        self.refresh()

    def _segment_block(self, a: int, z: int, segment) -> _Block:
        b = self.base
        columns = {"ids": b.ids[a:z], "camera": b.camera[a:z], "time": b.time[a:z],
                   "alive": torch.ones(z - a, dtype=torch.bool)}
        if self.device is not None and self.ann:  # two-stage: memory maps on the host, read as candidates ask
            columns["sets"] = segment.sets()
            if self.scaled:
                columns["scale"] = segment.scale()
        elif self.scaled:  # on the CPU: memory maps that stay ones (read as searched)
            columns["sets"], columns["scale"] = segment.sets().to(self.device), segment.scale().to(self.device)
        elif self.device is not None:  # a memory map of fp16 on the CPU stays one (read as searched)
            columns["sets"] = segment.sets().to(self.device, self.dtype)
        if self.has_margin:
            columns["margin"] = b.margin[a:z].to(self.device)
        return _Block(a, columns, z - a)

    def _new_block(self, first: int) -> _Block:
        """An empty block of CHUNK_ROWS rows: the one allocation an addition makes."""
        columns = {name: torch.zeros(CHUNK_ROWS, dtype=dtype) for name, dtype in HOST.items()}
        if self.device is not None:
            dtype = torch.int8 if self.scaled else self.dtype
            columns["sets"] = torch.empty((CHUNK_ROWS, *self.set_shape), dtype=dtype, device=self.device)
        if self.scaled:
            columns["scale"] = torch.empty((CHUNK_ROWS, self.set_shape[0]), device=self.device)
        if self.has_margin:
            columns["margin"] = torch.zeros(CHUNK_ROWS, device=self.device)
        return _Block(first, columns, 0)

    def __len__(self) -> int:
        last = self.blocks[-1]
        return last.first + last.n

    def live_items(self) -> int:
        return len(self) - self.hidden

    def refresh(self, own: bool = False) -> set[str]:
        """Take in what was committed since this object last looked (by another process, or
        everything on open; `own`: by this one too), from one consistent snapshot; the
        segments taken in. Cheap when nothing changed: SQLite's data_version says so without
        reading a table (it counts other connections' commits only). All or nothing: after an
        error (out of memory) nothing is taken in, and the next refresh tries again in full."""
        version = self.store.data_version()
        if version == self._version and not own:
            return set()
        with self.lock:
            with self.store.transaction():  # one read snapshot: items, names and erasures agree
                cams, rows, erased = self.store.read_since(len(self), len(self.cameras), self.hidden)
            self.cameras.extend(cams)  # first: an item taken in never names a camera not yet known
            segments = set()
            for segment, group in itertools.groupby(rows, key=lambda r: r[0]):  # one add call's rows, in order
                _, _, _, persons, cameras, times = zip(*group)
                sets = None if self.device is None else load_file(self.store.segment_path(segment))["sets"]
                self._append(sets, persons, cameras, times)
                segments.add(segment)
            if erased:
                erased = torch.tensor(erased, dtype=torch.int64)
                which = self._block_index(erased)
                for w in which.unique().tolist():
                    self.blocks[w].hide(erased[which == w] - self.blocks[w].first)
                self.hidden = sum(block.hidden for block in self.blocks)
            self._version = version  # only now: a refresh that failed is retried in full by the next
            return segments

    def _append(self, sets, persons, cameras, times) -> None:
        """All or nothing: the new rows and any new block are allocated before the first write."""
        rows = {"ids": torch.tensor(persons, dtype=torch.int64), "camera": torch.tensor(cameras, dtype=torch.int32),
                "time": torch.tensor(times, dtype=torch.int64), "alive": torch.ones(len(persons), dtype=torch.bool)}
        if self.scaled:
            rows["sets"], rows["scale"] = (t.to(self.device) for t in kernels.quantize_sets(sets.float()))
        elif self.device is not None:
            rows["sets"] = sets.to(self.device, self.dtype)
        if self.has_margin:
            rows["margin"] = torch.zeros(len(persons), device=self.device)
        last, count = self.blocks[-1], len(persons)
        room = last.capacity - last.n
        fresh = []
        for start in range(room, count, CHUNK_ROWS):
            fresh.append(self._new_block(len(self) + start))
        start = min(room, count)
        if start:
            last.write(rows, 0, start)
        for block in fresh:
            block.write(rows, start, min(start + CHUNK_ROWS, count))
            start += block.n
        self.blocks.extend(fresh)

    def _block_index(self, index: torch.Tensor) -> torch.Tensor:
        """The block of each of the items `index` (int64 on the host)."""
        return torch.searchsorted(torch.tensor([b.first for b in self.blocks]), index, right=True) - 1

    def take(self, name: str, index: torch.Tensor) -> torch.Tensor:
        """Column `name` (sets, scale, margin, ids, camera, time, alive) of items `index` (int64, any
        shape), on the device of the column's first block read (two-stage: a base block's sets
        are on the host)."""
        flat = index.reshape(-1).cpu()
        if len(self.blocks) == 1:  # the common case, a small gallery: one lookup
            column = self.blocks[0].view(name)
            return column[flat.to(column.device)].reshape(*index.shape, *column.shape[1:])
        which = self._block_index(flat)
        out = None
        for w in which.unique().tolist():
            block, sel = self.blocks[w], (which == w).nonzero().squeeze(1)
            column = block.view(name)
            rows = column[(flat[sel] - block.first).to(column.device)]
            if out is None:
                out = column.new_empty((flat.numel(), *column.shape[1:]))
            out[sel.to(out.device)] = rows.to(out.device, out.dtype)  # two-stage: base on the host, additions not
        if out is None:  # no index: an empty column slice of the right dtype and shape
            out = self.blocks[0].view(name)[:0]
        return out.reshape(*index.shape, *out.shape[1:])

    def sets_of(self, index: torch.Tensor) -> torch.Tensor:
        """The float32 sets of items `index` (int64 [B]) as searches score them (dequantized where 8-bit)."""
        sets = self.take("sets", index)
        return kernels.dequantize_sets(sets, self.take("scale", index)) if self.scaled else sets.float()

    def column(self, name: str) -> torch.Tensor:
        """Column `name` of every item, concatenated (a copy: for checks and small galleries)."""
        return torch.cat([b.view(name) for b in self.blocks])

    def paths(self, indices) -> list[str]:
        """The paths of items `indices`, from the live store."""
        return self.store.paths(indices)

    def plan(self, cameras=None, since=None, until=None) -> list[tuple[_Block, int, int, torch.Tensor | None]]:
        """What a search with this filter reads: (block, start row, stop row, allowed mask on
        the device or None) of every run of zones that can match, the mask built only inside
        them. An unknown camera, a bad time or since > until: ValueError."""
        want, lo, hi = filter_bounds(self.cameras, cameras, since, until)
        parts = []
        for block in self.blocks:
            for a, z in block.runs(want, lo, hi):
                mask = item_mask(block.view("camera")[a:z], block.view("time")[a:z], want, lo, hi)
                if mask is not None:
                    mask &= block.view("alive")[a:z]
                    if mask.any():
                        parts.append((block, a, z, mask.to(self.device)))
                elif block.hidden:
                    parts.append((block, a, z, block.alive_on(self.device)[a:z]))
                else:
                    parts.append((block, a, z, None))
        return parts

    def search(self, queries: torch.Tensor, k: int, margin: bool = False, cameras=None, since=None,
               until=None, candidates: int | None = None) -> Found:
        """kernels.search over the live items that pass the filter: (scores, indices) [Q, k'] on
        the search's device; `margin`: subtract the base gallery's adaptive margin;
        `candidates`: two-stage, each query's max(n, k) nearest items of every indexed block
        (`exact` False where an index chose them)."""
        if self.device is None:
            raise RuntimeError("this live gallery was opened without its sets (sets=None): nothing to search")
        if candidates is not None and candidates < 1:
            raise ValueError(f"candidates must be at least 1, got {candidates}")
        if candidates is not None:  # fewer than k could not fill a query's k hits
            candidates = max(candidates, k)
        host, parts, exact = None, [], True
        for block, a, z, mask in self.plan(cameras, since, until):
            weights = block.view("margin") if margin and self.has_margin else None
            if candidates is None or block.ann is None or z - a <= candidates:
                sets, scale = self._sets(block, slice(a, z))
                parts.append(kernels.Part(block.first + a, sets, None if weights is None else weights[a:z], mask,
                                          scale))
                continue
            if host is None:
                host, exact = queries.float().cpu().numpy(), False
            found = ann_index.candidates(block.ann, host, candidates, self.ann, self.nprobe, self.base.weight, (a, z),
                                         None if mask is None else mask.cpu().numpy())
            if not len(found):
                continue
            local = torch.from_numpy(found)
            sets, scale = self._sets(block, local)
            rows = local.to(self.device)
            parts.append(kernels.Part(rows + block.first, sets, None if weights is None else weights[rows],
                                      None if mask is None else mask[rows - a], scale))
        return Found(*kernels.search_parts(queries.to(self.device), parts, k, alpha=self.base.alpha,
                                           weight=self.base.weight), exact)

    def _sets(self, block: _Block, rows: slice | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A block's sets (and 8-bit scales) of `rows` (a slice, or int64 row indices on the host) on
        the search's device: a view where they are held there, those rows copied from the host's
        memory map where two-stage keeps the base gallery (the whole slice for a block scanned)."""
        sets = block.view("sets")
        at = rows if isinstance(rows, slice) else rows.to(sets.device)
        return sets[at].to(self.device), block.view("scale")[at].to(self.device) if self.scaled else None

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

    def compact(self, out: str | os.PathLike) -> dict:
        """Write base + additions - erasures as one gallery `out` (indices renumbered in order,
        so it ranks exactly as the live gallery did), a block at a time; what it kept and dropped."""
        if self.device is None:
            raise RuntimeError("this live gallery was opened without its sets (sets=None): nothing to compact")
        self.refresh()
        b = self.base
        with self.lock, GalleryWriter(out, self.set_shape, b.fingerprint, b.alpha, b.weight, b.root, self.cameras,
                                      self.has_margin, dtype=b.dtype) as w:
            for block in self.blocks:
                keep = block.view("alive").nonzero().squeeze(1)
                if keep.numel():
                    on = keep.to(self.device)
                    sets = block.view("sets")[on].cpu()  # 8-bit codes copied as they are, with their scales
                    w.add(sets if self.scaled else sets.half(), block.view("ids")[keep],
                          self.paths((keep + block.first).tolist()),
                          block.view("margin")[on].cpu() if self.has_margin else None,
                          block.view("camera")[keep], block.view("time")[keep],
                          block.view("scale")[on].cpu() if self.scaled else None)
        kept = self.live_items()
        return {"gallery": str(out), "kept": kept, "dropped": len(self) - kept, "added": len(self) - len(b)}

    def close(self) -> None:
        self.store.close()
