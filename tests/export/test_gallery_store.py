"""The version-3 gallery directory: no size cap, segments, streamed atomic writes, version-2
files still read, and one clear line for every bad file."""
import json
import sqlite3

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import export.gallery_writer as gallery_writer
from export.gallery import GalleryError, gallery_bytes, load_gallery, save_gallery
from export.gallery_meta import NO_TIME
from export.gallery_writer import GalleryWriter, install_gallery, rewrite_gallery
from kernels.quantize import quantize_sets

N = 10
CAMERAS = ["c0", "c1", "c2"]


def _sets(n=N, k=2, d=4, seed=0):
    return F.normalize(torch.randn(n, k, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _save(path, seed=0, segment_size=4, **kw):
    camera = torch.tensor([i % 3 for i in range(N)], dtype=torch.int32)
    time = torch.tensor([1000 * i if i != 5 else NO_TIME for i in range(N)])
    return save_gallery(path, _sets(seed=seed), torch.arange(N) // 2, [f"cam/{i:03d}.jpg" for i in range(N)], "fp",
                        16.0, 1.0, margin=torch.linspace(0, 1, N), root="/data", cameras=CAMERAS, camera=camera,
                        time=time, segment_size=segment_size, **kw)


def _same(a, b):
    assert torch.equal(a.sets, b.sets) and torch.equal(a.ids, b.ids) and list(a.paths) == list(b.paths)
    assert (a.margin is None) == (b.margin is None) and (a.margin is None or torch.equal(a.margin, b.margin))
    assert torch.equal(a.camera, b.camera) and torch.equal(a.time, b.time)
    assert (a.fingerprint, a.alpha, a.weight, a.root, a.cameras) == (b.fingerprint, b.alpha, b.weight, b.root, b.cameras)


def test_nothing_per_item_in_a_header(tmp_path):
    """What capped version 2 (every path in one header) is gone: 3 items of 9-character paths
    and 3,000 items of 2,000-character paths, in 3 segments each, have manifests of the same
    size, .npy headers of HEADER bytes, and the paths only in the table."""
    small = save_gallery(tmp_path / "small", _sets(3), range(3), [f"p{i:08d}" for i in range(3)], "fp", 16.0, 1.0,
                         segment_size=1)
    n = 3000
    paths = [f"cam07/2026-11-30/14/{i:06d}_" + "x" * 1974 for i in range(n)]
    large = save_gallery(tmp_path / "large", torch.zeros(n, 1, 2), range(n), paths, "fp", 16.0, 1.0,
                         segment_size=1000)
    sizes = [(g / "gallery.json").stat().st_size for g in (small, large)]
    assert abs(sizes[1] - sizes[0]) < 100 and "cam07" not in (large / "gallery.json").read_text()
    for f in large.glob("*.npy"):
        with open(f, "rb") as file:
            np.lib.format.read_magic(file)
            np.lib.format.read_array_header_1_0(file)
            assert file.tell() == gallery_writer.HEADER
    g = load_gallery(large, "fp", with_sets=False)
    assert [s.count for s in g.segments] == [1000] * 3 and g.paths[n - 1] == paths[-1] and g.paths[:2] == paths[:2]


def test_round_trip_by_segments(tmp_path):
    g = load_gallery(_save(tmp_path / "g"), fingerprint="fp")
    assert [(s.first, s.count) for s in g.segments] == [(0, 4), (4, 4), (8, 2)] and len(g) == N
    assert torch.equal(g.sets, _sets().half()) and g.sets.dtype == torch.float16
    assert torch.equal(torch.cat([s.sets() for s in g.segments]), g.sets)
    assert g.paths == [f"cam/{i:03d}.jpg" for i in range(N)] and g.paths[-1] == "cam/009.jpg"
    assert g.paths[torch.tensor(3)] == g.paths[np.int64(3)] == "cam/003.jpg"  # any index a list takes
    assert g.ids.tolist() == [i // 2 for i in range(N)] and g.margin.dtype == torch.float32
    assert (g.fingerprint, g.alpha, g.weight, g.root, g.cameras) == ("fp", 16.0, 1.0, "/data", CAMERAS)
    assert [s.cameras for s in g.segments] == [[0, 1, 2], [0, 1, 2], [0, 2]]
    assert [s.time for s in g.segments] == [(0, 3000), (4000, 7000), (8000, 9000)]  # item 5: unknown time
    assert load_gallery(tmp_path / "g", with_sets=False).sets.device.type == "meta"


def test_a_filter_skips_segments_it_excludes(tmp_path):
    g = load_gallery(_save(tmp_path / "g"))
    assert [s.first for s in g.matching_segments(until=3500)] == [0]
    assert [s.first for s in g.matching_segments(cameras=["c1"], since=7000)] == [4]  # segment 8..9: no c1
    assert [s.first for s in g.matching_segments()] == [0, 4, 8]
    mask = g.allowed(cameras=["c1"], since=7000)
    kept = {s.first for s in g.matching_segments(cameras=["c1"], since=7000)}
    assert all(any(s.first <= i < s.first + s.count for s in g.segments if s.first in kept)
               for i in mask.nonzero().flatten().tolist())


def test_version_2_files_load_and_convert(tmp_path):
    v2 = tmp_path / "v2.safetensors"  # what version 2 wrote: one file, paths in the header
    paths = [f"p{i}.jpg" for i in range(N)]
    save_file({"sets": _sets().half(), "ids": torch.arange(N), "camera": torch.zeros(N, dtype=torch.int32),
               "time": torch.arange(N) * 10}, v2,
              metadata={"format": "tbps-gallery", "version": "2", "fingerprint": "fp", "alpha": "16.0",
                        "weight": "1.0", "paths": json.dumps(paths), "root": "r", "cameras": '["c0"]'})
    old = load_gallery(v2, "fp")
    assert len(old.segments) == 1 and old.segments[0].time == (0, 90) and old.paths == paths
    new = load_gallery(rewrite_gallery(old, tmp_path / "v3", segment_size=3), "fp")
    _same(new, old)
    assert len(new.segments) == 4 and new.margin is None


def test_split_by_rewrite_keeps_every_item(tmp_path):
    g = load_gallery(_save(tmp_path / "g"))
    parts = [load_gallery(rewrite_gallery(g, tmp_path / f"s{i}", a, b, segment_size=3))
             for i, (a, b) in enumerate([(0, 3), (3, 9), (9, 10)])]
    assert sum((p.paths for p in parts), []) == list(g.paths)
    assert torch.equal(torch.cat([p.sets for p in parts]), g.sets) and all(p.cameras == CAMERAS for p in parts)


def test_a_failed_write_leaves_the_old_gallery_as_it_was(tmp_path, monkeypatch):
    out = _save(tmp_path / "g")
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    calls = []

    def full_disk(self, array):  # the third write fails as a full disk does
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(self, array)
    real = gallery_writer._Column.append
    monkeypatch.setattr(gallery_writer._Column, "append", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _save(tmp_path / "g", seed=1)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["g"]  # no temporary directory, no partial segment
    monkeypatch.undo()
    with pytest.raises(ValueError, match="boom"), GalleryWriter(tmp_path / "g", (2, 4), "fp", 16.0, 1.0) as w:
        w.add(_sets(3), range(3), ["a", "b", "c"])
        raise ValueError("boom")
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before and len(list(tmp_path.iterdir())) == 1
    _save(tmp_path / "g", seed=1)  # a successful write replaces it whole
    assert torch.equal(load_gallery(out).sets, _sets(seed=1).half()) and len(list(tmp_path.iterdir())) == 1


def test_writer_refuses_what_does_not_fit(tmp_path):
    with pytest.raises(GalleryError, match=r"g \(items 0..2\): sets must be \[3, 2, 4\], got \[3, 2, 5\]"):
        with GalleryWriter(tmp_path / "g", (2, 4), "fp", 16.0, 1.0) as w:
            w.add(torch.zeros(3, 2, 5), range(3), ["a", "b", "c"])
    with pytest.raises(GalleryError, match=r"camera indices must be -1 or below 1"):
        with GalleryWriter(tmp_path / "g", (2, 4), "fp", 16.0, 1.0, cameras=["c"]) as w:
            w.add(_sets(2), range(2), ["a", "b"], camera=[0, 1])
    with pytest.raises(GalleryError, match="a margin for every item or for none"):
        with GalleryWriter(tmp_path / "g", (2, 4), "fp", 16.0, 1.0, margin=True) as w:
            w.add(_sets(2), range(2), ["a", "b"])
    with pytest.raises(GalleryError, match="needs at least one item"):
        with GalleryWriter(tmp_path / "g", (2, 4), "fp", 16.0, 1.0):
            pass
    assert not list(tmp_path.iterdir())


def _truncate(g, tmp_path):
    f = g / "000001.sets.npy"
    f.write_bytes(f.read_bytes()[:-8])


def _foreign(g, tmp_path):  # a segment of another gallery of the same shape, under this one's name
    other = _save(tmp_path / "other", seed=3)
    (g / "000001.sets.npy").write_bytes((other / "000001.sets.npy").read_bytes())


def _edit_manifest(g, change):
    m = json.loads((g / "gallery.json").read_text())
    change(m)
    (g / "gallery.json").write_text(json.dumps(m))


@pytest.mark.parametrize("damage, message", [
    (_truncate, r"000001.sets.npy: [\d,]+ bytes where the manifest says [\d,]+ \(truncated or replaced\)"),
    (_foreign, r"000001.sets.npy: its contents are not the ones the manifest lists"),
    (lambda g, t: (g / "000002.items.npy").unlink(), r"000002.items.npy: a segment's items is missing"),
    (lambda g, t: _edit_manifest(g, lambda m: m.update(items=11)), r"gallery.json: its segments hold 10 items, "
                                                                    r"the manifest says 11"),
    (lambda g, t: _edit_manifest(g, lambda m: m["segments"][1].update(count=5)),
     r"000001.sets.npy: float16 \[4, 2, 4\] where the manifest says float16 \[5, 2, 4\]"),
    (lambda g, t: _edit_manifest(g, lambda m: m["segments"][2].update(first=9)),
     r"gallery.json: segment 000002.sets.npy starts at item 9 with 2 items; items 8.. were expected next"),
    (lambda g, t: _edit_manifest(g, lambda m: m.update(set_shape=[2, 5])),
     r"000000.sets.npy: float16 \[4, 2, 4\] where the manifest says float16 \[4, 2, 5\]"),
    (lambda g, t: _edit_manifest(g, lambda m: m.update(version=4)), r"gallery.json: gallery version 4; this reader"),
    (lambda g, t: _edit_manifest(g, lambda m: m.update(format="other")), r"gallery.json: not a tbps-gallery manifest"),
    (lambda g, t: _edit_manifest(g, lambda m: m.pop("dtype")), r"gallery.json: bad manifest \(KeyError: 'dtype'\)"),
    (lambda g, t: (g / "gallery.json").write_text("{"), r"gallery.json: not JSON"),
    (lambda g, t: (g / "gallery.json").unlink(), r"g: not a gallery \(a gallery directory holds gallery.json\)"),
    (lambda g, t: (g / "paths.sqlite").write_bytes(b"x" * 10), r"paths.sqlite: [\d,]+ bytes where the manifest"),
    (lambda g, t: _edit_manifest(g, lambda m: m["segments"][0].pop("time")),
     r"gallery.json: bad manifest \(KeyError: 'time'\)"),
    (lambda g, t: _edit_manifest(g, lambda m: m["segments"][0]["sets"].update(file="../other/000000.sets.npy")),
     r"gallery.json: lists '../other/000000.sets.npy', not a file name in the gallery directory"),
])
def test_a_bad_gallery_is_refused_in_one_line_naming_the_file(tmp_path, damage, message):
    g = _save(tmp_path / "g")
    damage(g, tmp_path)
    with pytest.raises(GalleryError, match=message) as e:
        load_gallery(g)
    assert "\n" not in str(e.value) and str(tmp_path / "g") in str(e.value)


def test_metadata_disagreeing_with_its_segments(tmp_path):
    g = _save(tmp_path / "g")
    short = _save(tmp_path / "short", segment_size=3)  # paths of 10 items, with one row gone below
    db = sqlite3.connect(short / "paths.sqlite")
    db.execute("DELETE FROM items WHERE idx = 9")
    db.commit()
    db.close()
    _edit_manifest(short, lambda m: m["paths"].update(bytes=(short / "paths.sqlite").stat().st_size,
                                                      digest=gallery_writer.file_digest(short / "paths.sqlite")))
    with pytest.raises(GalleryError, match=r"paths.sqlite: holds paths up to item 8, the manifest says 10 items"):
        load_gallery(short)
    cams = np.load(g / "000000.items.npy")
    cams["camera"][0] = 7
    np.save(g / "000000.items.npy", cams)  # a camera past the names, listed in the manifest as if valid
    _edit_manifest(g, lambda m: m["segments"][0]["items"].update(bytes=(g / "000000.items.npy").stat().st_size,
                                                                 digest=gallery_writer.file_digest(g / "000000.items.npy")))
    with pytest.raises(GalleryError, match=r"gallery.json: camera indices must be -1 or below 3"):
        load_gallery(g)


def test_another_models_gallery_is_refused(tmp_path):
    with pytest.raises(GalleryError, match=r"g: built by checkpoint fp, but the model searching it is checkpoint xx"):
        load_gallery(_save(tmp_path / "g"), fingerprint="xx")


def test_gallery_bytes(tmp_path):
    g = _save(tmp_path / "g")
    assert gallery_bytes(g) == sum(f.stat().st_size for f in g.iterdir())


def test_install_links_the_listed_files_and_converts_a_version_2_file(tmp_path):
    source = _save(tmp_path / "g")
    (source / "notes.txt").write_text("not the gallery's")
    served = install_gallery(load_gallery(source), tmp_path / "repo" / "gallery")
    assert sorted(f.name for f in served.iterdir()) == sorted(f.name for f in source.iterdir() if f.suffix != ".txt")
    assert all((served / f.name).stat().st_ino == f.stat().st_ino for f in served.iterdir())  # links, not copies
    _same(load_gallery(served), load_gallery(source))
    v2 = tmp_path / "v2.safetensors"
    save_file({"sets": _sets().half(), "ids": torch.arange(N)}, v2,
              metadata={"format": "tbps-gallery", "version": "2", "fingerprint": "fp", "alpha": "16.0",
                        "weight": "1.0", "paths": json.dumps([f"p{i}" for i in range(N)])})
    with pytest.raises(ValueError, match=r"v2.safetensors: loaded without its sets \(with_sets=False\)"):
        install_gallery(load_gallery(v2, with_sets=False), served)
    converted = install_gallery(load_gallery(v2), served)  # replaces the installed one whole
    _same(load_gallery(converted), load_gallery(v2))
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["gallery"]  # no temporary left


def test_an_8bit_gallery_stores_int8_sets_and_row_scales_per_segment(tmp_path):
    """set_dtype int8: each segment's int8 sets with their float32 row scales beside them, both
    memory-mapped, the sets those kernels.quantize_sets gives; copies (rewrite, install) keep the
    codes as they are; version-3 fp16 galleries read as before (no scale)."""
    g8 = load_gallery(_save(tmp_path / "g8", set_dtype="int8"), "fp")
    want, want_scale = quantize_sets(_sets())
    assert g8.dtype == "int8" and g8.sets.dtype == torch.int8 and torch.equal(g8.sets, want)
    assert torch.equal(g8.scale, want_scale) and [s.scale().shape for s in g8.segments] == [(4, 2), (4, 2), (2, 2)]
    assert sorted(f.name for f in (tmp_path / "g8").glob("*.scale.npy")) == [f"00000{i}.scale.npy" for i in range(3)]
    assert load_gallery(tmp_path / "g8", with_sets=False).sets.dtype == torch.int8
    copy = load_gallery(rewrite_gallery(g8, tmp_path / "copy", segment_size=3))
    _same(copy, g8)
    assert copy.dtype == "int8" and torch.equal(copy.scale, g8.scale) and len(copy.segments) == 4
    _same(load_gallery(install_gallery(g8, tmp_path / "installed")), g8)
    assert (tmp_path / "g8" / "000000.sets.npy").stat().st_size == gallery_writer.HEADER + 4 * 2 * 4  # a byte each
    g16 = load_gallery(_save(tmp_path / "g16"))
    assert g16.scale is None and g16.sets.dtype == torch.float16 and all(s.scale() is None for s in g16.segments)


def _scale_file(g, tmp_path):
    np.save(g / "000001.scale.npy", np.zeros((4, 3), np.float32))  # a scale per row of sets of 3 rows
    f = g / "000001.scale.npy"
    _edit_manifest(g, lambda m: m["segments"][1]["scale"].update(bytes=f.stat().st_size,
                                                                 digest=gallery_writer.file_digest(f)))


@pytest.mark.parametrize("damage, message", [
    (_scale_file, r"000001.scale.npy: float32 \[4, 3\] where the manifest says float32 \[4, 2\]"),
    (lambda g, t: (g / "000002.scale.npy").unlink(), r"000002.scale.npy: a segment's scales is missing"),
    (lambda g, t: _edit_manifest(g, lambda m: m["segments"][0].pop("scale")),
     r"gallery.json: segment 000000.sets.npy of an int8 gallery lists no scale file"),
    (lambda g, t: (g / "000000.scale.npy").write_bytes((g / "000000.scale.npy").read_bytes()[:-4]),
     r"000000.scale.npy: [\d,]+ bytes where the manifest says"),
])
def test_a_bad_8bit_gallery_is_refused_in_one_line_naming_the_file(tmp_path, damage, message):
    g = _save(tmp_path / "g", set_dtype="int8")
    damage(g, tmp_path)
    with pytest.raises(GalleryError, match=message) as e:
        load_gallery(g)
    assert "\n" not in str(e.value) and str(tmp_path / "g") in str(e.value)


def test_the_writer_refuses_a_scale_that_does_not_fit_its_sets(tmp_path):
    q, scale = quantize_sets(_sets(2))
    with pytest.raises(GalleryError, match=r"g \(items 0..1\): scale must be float32 \[2, 2\]"):
        with GalleryWriter(tmp_path / "g", (2, 4), "fp", 16.0, 1.0, dtype="int8") as w:
            w.add(q, range(2), ["a", "b"], scale=scale[:, :1])
    with pytest.raises(GalleryError, match=r"a scale goes with int8 sets; this gallery stores float16"):
        with GalleryWriter(tmp_path / "g", (2, 4), "fp", 16.0, 1.0) as w:
            w.add(q, range(2), ["a", "b"], scale=scale)
    assert not list(tmp_path.iterdir())
