"""The live gallery on real files: additions and erasures searched at once, durable across a
reopen and a kill -9, refused cleanly when bad, and compacted into a gallery that ranks the same."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import kernels
from export.gallery import load_gallery, save_gallery
from export.gallery_meta import allowed_items
from serving.live_gallery import LiveGallery
from serving.live_store import SEGMENTS, GalleryReplaced

REPO = Path(__file__).resolve().parents[2]


def unit(n, k=3, d=16, seed=0):
    return F.normalize(torch.randn(n, k, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.fixture
def base(tmp_path):
    return save_gallery(tmp_path / "base.safetensors", unit(20), torch.arange(20) // 4,
                        [f"base/{i}.jpg" for i in range(20)], "fp", 16.0, 1.0, cameras=["c1", "c2"],
                        camera=torch.arange(20) % 2, time=torch.arange(20) * 1000)


def top(live, queries, k, **filters):
    return live.search(queries, k, **filters)


def test_added_items_are_found_at_once_and_after_a_reopen(tmp_path, base):
    live = LiveGallery(tmp_path / "live", base)
    new = unit(3, seed=1)
    assert live.add(new, ["new/a.jpg", "new/b.jpg", "new/c.jpg"], [7, 8, 9], ["c3", "c1", None],
                    ["1970-01-01T00:00:30Z", None, "1970-01-01T00:00:31Z"]) == [20, 21, 22]
    assert top(live, new.half().float(), 1)[1][:, 0].tolist() == [20, 21, 22]  # each found by its own set
    assert top(live, new, 5, cameras=["c3"])[1].tolist() == [[20]] * 3
    assert sorted(top(live, new, 30, since="1970-01-01T00:00:20Z")[1][0].tolist()) == [20, 22]
    live.close()
    again = LiveGallery(tmp_path / "live", base)
    assert len(again) == 23 and again.paths(range(20, 23)) == ["new/a.jpg", "new/b.jpg", "new/c.jpg"]
    assert again.cameras == ["c1", "c2", "c3"] and again.column("camera")[20:].tolist() == [2, 0, -1]
    assert torch.equal(again.column("sets"), live.column("sets")) and again.column("ids")[20:].tolist() == [7, 8, 9]


def test_erased_items_are_gone_from_every_query_also_after_a_reopen(tmp_path, base):
    live = LiveGallery(tmp_path / "live", base)
    live.add(unit(2, seed=2), ["new/a.jpg", "new/b.jpg"], [1, 99])
    assert live.erase(paths=["base/3.jpg", "new/b.jpg"]) == [3, 21]
    assert live.erase(persons=[1]) == [4, 5, 6, 7, 20]  # person 1: base 4-7 and the new a.jpg
    assert live.erase(paths=["nowhere.jpg"], persons=[12345]) == []  # nothing matched: nothing changed
    gone = {3, 4, 5, 6, 7, 20, 21}
    for reopen in (False, True):
        if reopen:
            live.close()
            live = LiveGallery(tmp_path / "live", base)
        found = top(live, unit(8, seed=3), 30)[1]
        assert found.shape == (8, 15) and not gone & set(found.flatten().tolist())
    live.add(unit(1, seed=4), ["new/b.jpg"])  # an erased path may come back, under a new index
    assert live.paths([22]) == ["new/b.jpg"] and live.column("alive")[22] and not live.column("alive")[21]


def test_compaction_ranks_exactly_as_the_live_gallery(tmp_path, base):
    live = LiveGallery(tmp_path / "live", base)
    live.add(unit(6, seed=5), [f"new/{i}.jpg" for i in range(6)], cameras=["c9"] * 6)
    live.erase(paths=["base/0.jpg", "new/2.jpg"], persons=[3])
    report = live.compact(tmp_path / "compact.safetensors")
    assert report == {"gallery": str(tmp_path / "compact.safetensors"), "kept": 20, "dropped": 6, "added": 6}
    g = load_gallery(tmp_path / "compact.safetensors")
    keep = live.column("alive").nonzero().squeeze(1)
    assert g.paths == live.paths(keep.tolist()) and g.cameras == ["c1", "c2", "c9"]
    queries = unit(10, seed=6)
    s_live, i_live = top(live, queries, 12)
    s_new, i_new = kernels.search(queries, g.sets, 12, alpha=g.alpha, weight=g.weight)
    assert torch.equal(keep[i_new], i_live) and torch.equal(s_new, s_live)
    filtered = top(live, queries, 12, cameras=["c9"])[1]
    assert torch.equal(keep[kernels.search(queries, g.sets, 12, allowed=g.allowed(cameras=["c9"]))[1]], filtered)


def test_bad_additions_are_refused_and_change_nothing(tmp_path, base):
    live = LiveGallery(tmp_path / "live", base)
    for args, message in [
        ((unit(1), ["base/1.jpg"]), "already in the gallery: \\['base/1.jpg'\\]"),
        ((unit(2), ["x.jpg", "x.jpg"]), "already in the gallery: \\['x.jpg'\\]"),
        ((unit(1, d=8), ["y.jpg"]), "expected sets of shape \\[B, 3, 16\\], got \\[1, 3, 8\\]"),
        ((unit(2), ["y.jpg"]), "expected 1 sets"),
        ((unit(1), ["y.jpg"], None, None, ["noon"]), "bad time 'noon'"),
    ]:
        with pytest.raises(ValueError, match=message):
            live.add(*args)
    assert len(live) == 20 and os.listdir(tmp_path / "live" / SEGMENTS) == []
    with pytest.raises(ValueError, match="unknown camera"):
        live.search(unit(1), 1, cameras=["c7"])
    other = save_gallery(tmp_path / "other.safetensors", unit(5), range(5), list("abcde"), "fp", 16.0, 1.0)
    with pytest.raises(ValueError, match="holds the live gallery of another gallery file"):
        LiveGallery(tmp_path / "live", other)


class _KilledBetweenRows:
    """The writer's connection, killed after the first row of an add's items."""

    def __init__(self, db):
        self.db = db

    def __getattr__(self, name):
        return getattr(self.db, name)

    def __enter__(self):
        return self.db.__enter__()

    def __exit__(self, *exc):
        return self.db.__exit__(*exc)

    def executemany(self, sql, rows):
        rows = list(rows)
        if sql.startswith("INSERT INTO items"):
            self.db.execute(sql, rows[0])
            raise KeyboardInterrupt
        return self.db.executemany(sql, rows)


def test_an_add_interrupted_between_rows_leaves_nothing(tmp_path, base):
    live = LiveGallery(tmp_path / "live", base)
    live.store.db = _KilledBetweenRows(live.store.db)
    with pytest.raises(KeyboardInterrupt):
        live.add(unit(3, seed=9), ["k/0.jpg", "k/1.jpg", "k/2.jpg"])
    live.store.db.db.close()
    again = LiveGallery(tmp_path / "live", base)
    assert len(again) == 20 and os.listdir(tmp_path / "live" / SEGMENTS) == []  # all of the call or none


def test_a_reader_takes_in_the_writers_commits_and_never_deletes_its_segments(tmp_path, base):
    writer = LiveGallery(tmp_path / "live", base)
    reader = LiveGallery(tmp_path / "live", base, writer=False)
    assert reader.refresh() == set()  # nothing new: no table read
    writer.add(unit(2, seed=7), ["new/a.jpg", "new/b.jpg"], cameras=["c5", None])
    writer.erase(paths=["base/2.jpg"])
    (tmp_path / "live" / SEGMENTS / "000000000099.safetensors").write_bytes(b"being written")
    assert reader.refresh() == {"000000000020.safetensors"}
    assert len(reader) == 22 and reader.cameras == ["c1", "c2", "c5"] and not reader.column("alive")[2]
    assert torch.equal(reader.column("sets"), writer.column("sets"))
    assert torch.equal(top(reader, unit(4, seed=8), 22)[1], top(writer, unit(4, seed=8), 22)[1])
    LiveGallery(tmp_path / "live", base, writer=False)  # a reader's open leaves others' files alone
    assert (tmp_path / "live" / SEGMENTS / "000000000099.safetensors").exists()
    with pytest.raises(RuntimeError, match="opened to read"):
        reader.add(unit(1), ["x.jpg"])



def test_any_process_erases_what_the_adder_committed_and_metadata_only_copies_hold_no_sets(tmp_path, base):
    adder = LiveGallery(tmp_path / "live", base, sets=None)  # the server's ingest: no copy of the sets
    eraser = LiveGallery(tmp_path / "live", base, writer=False, sets=None)
    searcher = LiveGallery(tmp_path / "live", base, writer=False)
    assert adder.device is None and adder.base.sets.device.type == "meta"
    assert adder.add(unit(2, seed=3), ["new/a.jpg", "new/b.jpg"], [42, 43]) == [20, 21]
    assert eraser.erase(persons=[42, 1]) == [4, 5, 6, 7, 20]  # it took in the adder's item 20 first
    assert eraser.live_items() == 22 - 5
    searcher.refresh()
    alive = searcher.column("alive")
    assert searcher.live_items() == 17 and not alive[[4, 20]].any() and alive[21]
    assert adder.add(unit(1, seed=4), ["new/a.jpg"]) == [22]  # the adder saw the erasure: the path is free
    with pytest.raises(RuntimeError, match="without its sets"):
        adder.compact(tmp_path / "out.safetensors")

def test_erasures_are_reread_only_when_they_changed_and_counted_without_a_scan(tmp_path, base):
    live = LiveGallery(tmp_path / "live", base)
    live.add(unit(2, seed=5), ["new/a.jpg", "new/b.jpg"])
    store = live.store
    assert live.erase(persons=[0]) == [0, 1, 2, 3] and store.live_items() == 22 - 4
    with store.transaction():
        assert store.read_since(22, 2, 0)[2] == [0, 1, 2, 3]
        assert store.read_since(22, 2, 4) == ([], [], [])  # the same count is the same set
    assert live.hidden == 4 and live.live_items() == store.live_items() == 18
    assert live.erase(paths=["new/b.jpg", "base/0.jpg"]) == [21] and live.hidden == 5 and store.live_items() == 17
    reader = LiveGallery(tmp_path / "live", base, writer=False)
    alive = reader.column("alive")
    assert reader.hidden == 5 and not alive[[0, 1, 2, 3, 21]].any() and alive[[4, 20]].all()


def test_a_replaced_version_refuses_adds_and_erasures_and_is_sealed_only_with_nothing_to_lose(tmp_path, base):
    live = LiveGallery(tmp_path / "live", base)
    store = live.store
    assert store.seal() == (0, 0)  # nothing added or erased: nothing a newer version could lose
    for change in (lambda: store.add(unit(1).numpy(), ["late.jpg"]), lambda: store.erase(persons=[0])):
        with pytest.raises(GalleryReplaced, match="replaced this one while the call ran; nothing was changed"):
            change()
    live.close()
    live = LiveGallery(tmp_path / "live", base)  # a sealed version still opens (a rollback reads it)
    assert live.live_items() == 20 and len(live) == 20
    live.store.unseal()
    assert live.add(unit(1), ["late.jpg"]) == [20]
    assert live.store.seal() == (1, 0)  # refused: the addition would be lost
    assert live.erase(paths=["late.jpg"]) == [20] and live.store.seal() == (1, 1)


WRITER = textwrap.dedent("""
    import sys, torch
    from serving.live_gallery import LiveGallery
    live = LiveGallery(sys.argv[1], sys.argv[2])
    for call in range(10_000):
        sets = torch.nn.functional.normalize(torch.randn(4, 3, 16), dim=-1)
        first = live.add(sets, [f"ingest/{call}_{i}.jpg" for i in range(4)], cameras=["c1"] * 4)[0]
        print(first, flush=True)  # acknowledged: add returned
""")


@pytest.mark.slow
def test_every_acknowledged_item_survives_a_kill_9(tmp_path, base):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "live"), str(base)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    acked = []
    try:
        while len(acked) < 40:
            line = proc.stdout.readline()
            assert line, "the writer stopped before the kill"
            acked.append(int(line))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    live = LiveGallery(tmp_path / "live", base)
    assert len(live) >= 20 + 4 * len(acked)  # perhaps more: added, killed before it printed
    for call, first in enumerate(acked):
        assert live.paths(range(first, first + 4)) == [f"ingest/{call}_{i}.jpg" for i in range(4)]
    segments = os.listdir(tmp_path / "live" / SEGMENTS)
    assert len(segments) == (len(live) - 20) // 4  # the uncommitted segment, if any, was removed


def test_an_out_of_memory_refresh_changes_nothing_and_the_next_one_takes_the_items_in(tmp_path, base, monkeypatch):
    """Issue 24, fault 2: at 8b2c390 refresh recorded the store's version before growing its buffers, so
    after an out-of-memory error there the added items stayed unsearchable until another commit."""
    writer = LiveGallery(tmp_path / "live", base)
    reader = LiveGallery(tmp_path / "live", base, writer=False)
    writer.add(unit(2, seed=3), ["new/a.jpg", "new/b.jpg"], [5, 6], ["c1", "c9"])
    grow, failed = reader._new_block, []

    def out_of_memory(first):  # the growth: a new block for the added rows
        if not failed:
            failed.append(first)
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return grow(first)
    monkeypatch.setattr(reader, "_new_block", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        reader.refresh()
    assert failed == [20] and len(reader) == 20
    assert {len(reader.column(c)) for c in ("sets", "ids", "camera", "time", "alive")} == {20}
    assert reader.refresh() and len(reader) == 22 and reader.paths([20, 21]) == ["new/a.jpg", "new/b.jpg"]
    assert {len(reader.column(c)) for c in ("sets", "ids", "camera", "time", "alive")} == {22}
    assert top(reader, unit(2, seed=3), 1)[1][:, 0].tolist() == [20, 21]


class _Allocations(TorchDispatchMode):
    """The bytes of every tensor an operation allocates (views and in-place writes excluded)."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view and not func._schema.is_mutable:
            self.sizes += [t.untyped_storage().nbytes() for t in (out if isinstance(out, (tuple, list)) else [out])
                           if isinstance(t, torch.Tensor)]
        return out


def reference(live, queries, k, cameras=None, since=None, until=None):
    """One kernels.search over the whole live gallery, concatenated, masked by filter and erasures."""
    mask = allowed_items(live.cameras, live.column("camera"), live.column("time"), cameras, since, until)
    alive = live.column("alive")
    return kernels.search(queries, live.column("sets"), k, alpha=16.0, weight=1.0,
                          allowed=alive if mask is None else mask & alive)


def test_ingest_allocates_one_chunk_at_most_and_never_copies_the_gallery(tmp_path, monkeypatch):
    """Issue 24, fault 2: at 8b2c390 the first ingest allocated 2N rows while the N rows were alive (3N at
    peak: 154 GB for a 51 GB gallery). Growth is now a new block of CHUNK_ROWS rows, and searches over the
    blocks rank exactly as one search over the whole (ties across blocks to the lower index)."""
    from serving import live_gallery
    monkeypatch.setattr(live_gallery, "CHUNK_ROWS", 8, raising=False)
    n, row = 200, 3 * 16 * 2  # a set's bytes in fp16
    sets = unit(n)
    base = save_gallery(tmp_path / "g", sets, torch.zeros(n, dtype=torch.int64), [f"b/{i}.jpg" for i in range(n)],
                        "fp", 16.0, 1.0)
    live = LiveGallery(tmp_path / "live", base)
    for call, b in enumerate((1, 5, 13, 2)):  # within a block, filling one, spanning two new ones
        with _Allocations() as allocations:
            live.add(sets[call * 20:call * 20 + b], [f"a/{call}_{i}.jpg" for i in range(b)])  # duplicates: ties
        assert max(allocations.sizes) <= max(8, b) * row
    assert len(live) == n + 21 and [blk.n for blk in live.blocks] == [n, 8, 8, 5]
    first_rows = live.blocks[0].view("sets").data_ptr()
    live.erase(paths=["b/0.jpg", "a/2_3.jpg"])
    assert live.blocks[0].view("sets").data_ptr() == first_rows  # the base's rows stay where they were loaded
    queries = torch.cat([sets[[0, 20, 41, 60]], unit(3, seed=9)])
    for k in (1, 3, 30, 500):
        assert all(torch.equal(a, b) for a, b in zip(live.search(queries, k), reference(live, queries, k)))


def test_a_filter_reads_only_the_zones_that_can_match(tmp_path, monkeypatch):
    """Issue 24, fault 4: at 8b2c390 a filter read every item and masked afterwards. Each block keeps the
    cameras and time range of every zone of ZONE_ROWS items; a search reads only zones that can match."""
    from serving import live_gallery
    monkeypatch.setattr(live_gallery, "ZONE_ROWS", 4, raising=False)
    monkeypatch.setattr(live_gallery, "CHUNK_ROWS", 8, raising=False)
    n = 40  # camera-major, then time: c0 items 0-9, c1 10-19, ...; item i at i seconds
    base = save_gallery(tmp_path / "g", unit(n), torch.arange(n), [f"b/{i}.jpg" for i in range(n)], "fp", 16.0, 1.0,
                        cameras=["c0", "c1", "c2", "c3"], camera=torch.arange(n) // 10, time=torch.arange(n) * 1000,
                        segment_size=16)
    live = LiveGallery(tmp_path / "live", base)
    live.add(unit(10, seed=1), [f"a/{i}.jpg" for i in range(10)], cameras=["c2"] * 10,
             times=[f"1970-01-01T00:01:{i:02d}Z" for i in range(10)])
    live.erase(paths=["b/13.jpg"])

    def rows(**filters):
        return [(blk.first + a, blk.first + z) for blk, a, z, _ in live.plan(**filters)]
    assert rows() == [(0, 16), (16, 32), (32, 40), (40, 48), (48, 50)]
    assert rows(cameras=["c1"]) == [(8, 16), (16, 20)]
    assert rows(since="1970-01-01T00:00:12Z", until="1970-01-01T00:00:14Z") == [(12, 16)]
    assert rows(cameras=["c2"], since="1970-01-01T00:01:00Z") == [(40, 48), (48, 50)]
    assert rows(cameras=["c0"], since="1970-01-01T00:01:00Z") == []
    queries = unit(5, seed=2)
    for filters in ({}, {"cameras": ["c1"]}, {"since": "1970-01-01T00:00:12Z", "until": "1970-01-01T00:00:14Z"},
                    {"cameras": ["c2", "c3"], "since": "1970-01-01T00:00:25Z"}, {"cameras": ["c0"], "since": 60_000}):
        for k in (1, 4, 60):
            assert all(torch.equal(a, b) for a, b in zip(live.search(queries, k, **filters),
                                                         reference(live, queries, k, **filters))), (filters, k)
    assert live.search(queries, 3, cameras=["c0"], since=60_000)[1].shape == (5, 0)


def test_an_8bit_gallery_holds_int8_sets_quantizes_additions_and_compacts_to_8bit(tmp_path):
    """Blocks of an 8-bit base hold its int8 codes and row scales (no float copy); additions are
    quantized the same way (a reopen gets the same codes); searches score the dequantized sets, and
    compaction writes an 8-bit gallery that ranks exactly as the live one."""
    base8 = save_gallery(tmp_path / "base8", unit(20), torch.arange(20) // 4, [f"base/{i}.jpg" for i in range(20)],
                         "fp", 16.0, 1.0, cameras=["c1"], camera=torch.zeros(20), segment_size=8, set_dtype="int8")
    live = LiveGallery(tmp_path / "live", base8)
    assert live.column("sets").dtype == torch.int8 and live.column("scale").shape == (20, 3)
    new = unit(5, seed=7)
    assert live.add(new, [f"new/{i}.jpg" for i in range(5)]) == [20, 21, 22, 23, 24]
    codes, scale = kernels.quantize_sets(new.half().float())  # what the live store keeps (fp16), quantized
    assert torch.equal(live.column("sets")[20:], codes) and torch.equal(live.column("scale")[20:], scale)
    whole = kernels.dequantize_sets(live.column("sets"), live.column("scale"))
    assert torch.equal(live.sets_of(torch.tensor([3, 22])), whole[[3, 22]])
    queries = unit(6, seed=8)
    s_live, i_live = top(live, queries, 9)
    s_ref, i_ref = kernels.search(queries.half().float(), whole, 9)  # the dequantized gallery, fp16 queries
    assert torch.equal(i_live, i_ref) and torch.allclose(s_live, s_ref, atol=1e-5)
    assert top(live, whole[21:22], 1)[1].tolist() == [[21]]
    live.erase(paths=["base/2.jpg", "new/1.jpg"])
    live.close()
    live = LiveGallery(tmp_path / "live", base8)
    assert torch.equal(live.column("sets")[20:], codes)
    live.compact(tmp_path / "compact")
    g = load_gallery(tmp_path / "compact")
    keep = live.column("alive").nonzero().squeeze(1)
    assert g.dtype == "int8" and torch.equal(g.sets, live.column("sets")[keep])
    assert torch.equal(g.scale, live.column("scale")[keep])
    s_new, i_new = kernels.search(queries, g.sets, 9, scale=g.scale)
    s_live, i_live = top(live, queries, 9)
    assert torch.equal(keep[i_new], i_live) and torch.allclose(s_new, s_live, atol=1e-6)
