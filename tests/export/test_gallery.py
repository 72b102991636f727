"""The gallery: round trip, fingerprint refusal, clear errors for bad paths and bad files
(version 1 and 2 files here; the version-3 directory in test_gallery_store.py)."""
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from export.gallery import GalleryError, load_gallery, save_gallery


def _sets(n=5, k=3, d=16):
    return F.normalize(torch.randn(n, k, d, generator=torch.Generator().manual_seed(0)), dim=-1)


@pytest.mark.parametrize("with_margin", [False, True])
def test_round_trip(tmp_path, with_margin):
    sets, margin = _sets(), torch.linspace(0, 1, 5)
    path = save_gallery(tmp_path / "g.safetensors", sets, [3, 3, 7, -1, 9], [f"imgs/{i}.jpg" for i in range(5)],
                        "abcd1234", alpha=16.0, weight=1.0, margin=margin if with_margin else None, root="/data")
    assert [p.name for p in tmp_path.iterdir()] == ["g.safetensors"]  # no temporary left behind
    g = load_gallery(path, fingerprint="abcd1234")
    assert g.sets.dtype == torch.float16 and torch.equal(g.sets, sets.half())
    assert g.ids.dtype == torch.int64 and g.ids.tolist() == [3, 3, 7, -1, 9]
    assert g.paths == [f"imgs/{i}.jpg" for i in range(5)] and len(g) == 5
    assert (g.fingerprint, g.alpha, g.weight, g.root) == ("abcd1234", 16.0, 1.0, "/data")
    if with_margin:
        assert g.margin.dtype == torch.float32 and torch.equal(g.margin, margin)
    else:
        assert g.margin is None


def test_other_checkpoint_is_refused(tmp_path):
    path = save_gallery(tmp_path / "g.safetensors", _sets(), range(5), list("abcde"), "aaaa", 16.0, 0.0)
    with pytest.raises(GalleryError, match="built by checkpoint aaaa.*is checkpoint bbbb"):
        load_gallery(path, fingerprint="bbbb")


def test_bad_paths_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="gallery not found: .*missing.safetensors"):
        load_gallery(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(GalleryError, match="garbage.safetensors: not a readable safetensors gallery file"):
        load_gallery(garbage)
    good = tmp_path / "good.safetensors"  # a version 2 file
    save_file({"sets": _sets().half(), "ids": torch.arange(5)}, good,
              metadata={"format": "tbps-gallery", "version": "2", "fingerprint": "a", "alpha": "16.0",
                        "weight": "0.0", "paths": '["a", "b", "c", "d", "e"]'})
    assert load_gallery(good).paths == list("abcde")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(GalleryError, match="truncated.safetensors: not a readable"):
        load_gallery(truncated)
    other = tmp_path / "other.safetensors"
    save_file({"sets": _sets().half()}, other)
    with pytest.raises(GalleryError, match="other.safetensors: not a tbps-gallery file"):
        load_gallery(other)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"sets": _sets().half(), "ids": torch.arange(4)}, wrong,
              metadata={"format": "tbps-gallery", "version": "1", "fingerprint": "a", "alpha": "16.0",
                        "weight": "0.0", "paths": '["a", "b", "c", "d", "e"]'})
    with pytest.raises(GalleryError, match=r"wrong.safetensors: ids must be int64 \[5\], got torch.int64 \[4\]"):
        load_gallery(wrong)


def test_save_validates(tmp_path):
    with pytest.raises(GalleryError, match="paths must be a list of 5 strings, got 4"):
        save_gallery(tmp_path / "g.safetensors", _sets(), range(5), list("abcd"), "a", 16.0, 0.0)
    with pytest.raises(GalleryError, match=r"g.safetensors: margin must be \[5\] like the paths, got 3"):
        save_gallery(tmp_path / "g.safetensors", _sets(), range(5), list("abcde"), "a", 16.0, 0.0,
                     margin=torch.zeros(3))
    with pytest.raises(GalleryError, match="non-empty"):
        save_gallery(tmp_path / "g.safetensors", torch.zeros(0, 1, 4), [], [], "a", 16.0, 0.0)
    assert not list(tmp_path.iterdir())


def test_paths_past_the_old_header_cap(tmp_path):
    """Version 2 kept every path in the safetensors header, which safetensors refuses past 100 MB
    (3M archive paths of 37 characters: 'header too large'). Four paths of 26 MB are the same
    header bytes without 3M items; the gallery now keeps its paths in a table, not a header."""
    paths = [f"cam{i:02d}/" + "2026-11-30/14/track_000123_f0045/" * 800_000 + f"{i}.jpg" for i in range(4)]
    assert sum(map(len, paths)) > 100_000_000
    g = load_gallery(save_gallery(tmp_path / "g", _sets(4), range(4), paths, "fp", 16.0, 1.0), "fp")
    assert len(g) == 4 and g.paths[3] == paths[3] and torch.equal(g.sets, _sets(4).half())
