"""Cameras and times per gallery item: the sidecar, the file, the filter mask, and clear refusals."""
import json
import zlib

import pytest
import torch
from safetensors.torch import save_file

from export.build_gallery import build_gallery
from export.gallery import GalleryError, load_gallery, save_gallery
from export.gallery_meta import NO_TIME, allowed_items, format_time, parse_time, read_sidecar
from serving.shards import split_gallery

PATHS = [f"imgs/{i:03d}.jpg" for i in range(6)]


def _sets(n=6):
    return torch.nn.functional.normalize(torch.randn(n, 2, 4), dim=-1)


@pytest.mark.parametrize("text, ms", [
    ("1970-01-01T00:00:01Z", 1000),
    ("1970-01-01T00:00:01", 1000),  # no offset: UTC
    ("1970-01-01T02:00:01+02:00", 1000),
    ("2026-11-30T14:05:00.250Z", 1796047500250),
])
def test_times_are_utc_milliseconds(text, ms):
    assert parse_time(text) == ms
    assert parse_time(format_time(ms)) == ms


def test_csv_and_jsonl_sidecars_give_the_same_metadata(tmp_path):
    csv = tmp_path / "meta.csv"
    csv.write_text("path,camera,time\nimgs/001.jpg,c2,2026-11-30T14:05:00Z\nimgs/004.jpg,c1,\n"
                   "imgs/000.jpg,c2,2026-11-30T09:00:00Z\nimgs/005.jpg,,2026-11-30T10:00:00Z\n")
    jsonl = tmp_path / "meta.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [
        {"path": "imgs/001.jpg", "camera": "c2", "time": "2026-11-30T14:05:00Z"}, {"path": "imgs/004.jpg", "camera": "c1"},
        {"path": "imgs/000.jpg", "camera": "c2", "time": "2026-11-30T09:00:00Z"},
        {"path": "imgs/005.jpg", "time": "2026-11-30T10:00:00Z"}]) + "\n\n")
    for sidecar in (csv, jsonl):
        cameras, camera, time = read_sidecar(sidecar, PATHS)
        assert cameras == ["c2", "c1"]
        assert camera.tolist() == [0, 0, -1, -1, 1, -1]  # unlisted and empty: unknown
        assert [format_time(t) for t in time.tolist()] == [
            "2026-11-30T09:00:00.000Z", "2026-11-30T14:05:00.000Z", "", "", "", "2026-11-30T10:00:00.000Z"]


@pytest.mark.parametrize("name, content, message", [
    ("m.csv", "path,camera\nimgs/009.jpg,c1\n", "m.csv:2: 'imgs/009.jpg' is not one of the images"),
    ("m.csv", "path,camera\nimgs/001.jpg,c1\nimgs/001.jpg,c2\n", "m.csv:3: 'imgs/001.jpg' is listed twice"),
    ("m.csv", "path,time\nimgs/001.jpg,yesterday\n", "m.csv:2: bad time 'yesterday'"),
    ("m.csv", "imgs/001.jpg,c1\n", "needs a header"),
    ("m.jsonl", '{"path": "imgs/001.jpg"}\n[1]\n', "m.jsonl:2: expected an object"),
    ("m.jsonl", '{"path": \n', "m.jsonl:1: not JSON"),
    ("m.txt", "", "a sidecar is .csv or .jsonl"),
])
def test_a_bad_sidecar_row_is_refused_with_its_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        read_sidecar(tmp_path / name, PATHS)


def test_the_gallery_file_keeps_cameras_and_times_and_reads_version_1(tmp_path):
    camera, time = torch.tensor([0, 1, -1, 0, 1, 1]), torch.tensor([5, 6, NO_TIME, 8, 9, 10])
    path = save_gallery(tmp_path / "g.safetensors", _sets(), range(6), PATHS, "ab", 16.0, 1.0,
                        cameras=["east", "west"], camera=camera, time=time)
    g = load_gallery(path)
    assert g.cameras == ["east", "west"] and g.camera.tolist() == camera.tolist() and torch.equal(g.time, time)
    assert g.allowed(cameras=["west"], since=6, until=9).tolist() == [False, True, False, False, True, False]
    old = tmp_path / "v1.safetensors"  # what version 1 wrote: no camera, time or cameras
    save_file({"sets": _sets().half(), "ids": torch.arange(6)}, old, metadata={
        "format": "tbps-gallery", "version": "1", "fingerprint": "ab", "alpha": "16.0", "weight": "1.0",
        "paths": json.dumps(PATHS), "root": ""})
    v1 = load_gallery(old)
    assert v1.cameras == [] and (v1.camera == -1).all() and (v1.time == NO_TIME).all()
    with pytest.raises(GalleryError, match="camera indices must be -1 or below 2"):
        save_gallery(tmp_path / "bad.safetensors", _sets(), range(6), PATHS, "ab", 16.0, 1.0,
                     cameras=["east", "west"], camera=torch.tensor([0, 2, 0, 0, 0, 0]))


def test_filters_equal_a_brute_force_reference_on_random_metadata():
    for seed in range(20):
        gen = torch.Generator().manual_seed(zlib.crc32(b"filters") + seed)
        n = int(torch.randint(1, 300, (1,), generator=gen))
        cameras = [f"cam{i}" for i in range(int(torch.randint(1, 6, (1,), generator=gen)))]
        camera = torch.randint(-1, len(cameras), (n,), generator=gen, dtype=torch.int32)
        time = torch.randint(0, 1000, (n,), generator=gen)
        time[torch.rand(n, generator=gen) < 0.1] = NO_TIME
        want = [c for c in cameras if torch.rand(1, generator=gen) < 0.5] or None
        lo, hi = sorted(torch.randint(0, 1000, (2,), generator=gen).tolist())
        since, until = (lo if torch.rand(1, generator=gen) < 0.7 else None), (hi if torch.rand(1, generator=gen) < 0.7 else None)
        mask = allowed_items(cameras, camera, time, want, since, until)
        expected = [(want is None or (c >= 0 and cameras[c] in want))
                    and (since is None and until is None
                         or (t != NO_TIME and (since is None or t >= since) and (until is None or t <= until)))
                    for c, t in zip(camera.tolist(), time.tolist())]
        if want is None and since is None and until is None:
            assert mask is None
        else:
            assert mask.tolist() == expected


def test_a_bad_filter_is_refused():
    camera, time = torch.zeros(3, dtype=torch.int32), torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"unknown camera\(s\) \['c9'\]; the gallery's cameras: c1"):
        allowed_items(["c1"], camera, time, ["c1", "c9"])
    with pytest.raises(ValueError, match="built without --meta"):
        allowed_items([], camera, time, ["c1"])
    with pytest.raises(ValueError, match="the time window is empty: since 2026-11-30T12:00:00.000Z is after"):
        allowed_items(["c1"], camera, time, None, "2026-11-30T12:00:00Z", "2026-11-30T11:00:00Z")


def test_build_gallery_reads_the_sidecar_first_and_shards_keep_it(tiny_run, synthetic_data, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,camera\nnot/there.jpg,c1\n")
    with pytest.raises(ValueError, match="is not one of the images"):
        build_gallery(tiny_run, tmp_path / "g.safetensors", data=synthetic_data, meta=bad, progress=False)
    assert not (tmp_path / "g.safetensors.parts").exists()  # refused before any encoding
    paths = load_gallery(build_gallery(tiny_run, tmp_path / "plain.safetensors", data=synthetic_data,
                                       progress=False)).paths
    sidecar = tmp_path / "meta.csv"
    sidecar.write_text("path,camera,time\n" + "".join(
        f"{p},c{i % 3},2026-11-30T{10 + i % 5:02d}:00:00Z\n" for i, p in enumerate(paths)))
    g = load_gallery(build_gallery(tiny_run, tmp_path / "g.safetensors", data=synthetic_data, meta=sidecar,
                                   progress=False))
    assert g.cameras == ["c0", "c1", "c2"] and g.camera.tolist() == [i % 3 for i in range(len(paths))]
    assert g.allowed(cameras=["c1"]).sum() == sum(i % 3 == 1 for i in range(len(paths)))
    (a, _), (b, offset) = split_gallery(tmp_path / "g.safetensors", 2, tmp_path / "shards")
    parts = load_gallery(a), load_gallery(b)
    assert all(p.cameras == g.cameras for p in parts)
    assert torch.equal(torch.cat([p.camera for p in parts]), g.camera) and offset == len(parts[0])
    assert torch.equal(torch.cat([p.time for p in parts]), g.time)
