"""Two-stage search on real files and real FAISS indexes: with every item a candidate it is the
exact search (ties included); with few, filters and erasures still hold, additions are found,
and a missing or corrupt index only makes its segment exact."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kernels
from export.ann_index import build_gallery_indexes, candidates, index_path
from export.gallery import load_gallery, save_gallery
from serving.live_gallery import LiveGallery

N, SEGMENT = 1200, 500  # three segments, the last one short


def people(n, k=3, d=16, seed=0):
    """Sets of n // 4 people, four noisy views each, two exact duplicates (ties)."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(n // 4, k, d, generator=g).repeat_interleave(4, 0)
    sets = F.normalize(centre + 0.5 * torch.randn(n, k, d, generator=g), dim=-1)
    sets[7], sets[N - 3] = sets[3], sets[3]
    return sets


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two-stage")
    path = save_gallery(folder / "g", people(N), torch.arange(N) // 4, [f"cam{i % 3}/{i}.jpg" for i in range(N)],
                        "fp", 16.0, 1.0, cameras=["c0", "c1", "c2"], camera=torch.arange(N) % 3,
                        time=torch.arange(N) * 1000, segment_size=SEGMENT)
    assert len(build_gallery_indexes(path, progress=lambda _: None)) == 3  # the set proxy
    assert len(build_gallery_indexes(path, "global", progress=lambda _: None)) == 3
    assert len(build_gallery_indexes(path, "rows", "IVF8,Flat", progress=lambda _: None)) == 3
    return path


def queries(n=6):
    return people(N, seed=1)[: 4 * n : 4]


@pytest.mark.parametrize("proxy", ["set", "global", "rows"])
def test_the_candidates_are_scored_exactly_and_all_of_them_is_the_exact_search(segmented, tmp_path, proxy):
    live = LiveGallery(tmp_path / "live", segmented, ann=proxy, nprobe=4)
    assert live.ann_notes == []
    q = torch.cat([queries(), live.column("sets")[3:4].float()])  # item 3's exact duplicates 7, N-3: a tie
    found = torch.from_numpy(np.concatenate([b.first + candidates(b.ann, q.numpy(), 40, proxy, 4)
                                             for b in live.blocks]))
    assert len(found) < N  # the first stage read a part of the gallery
    scores, index = kernels.search(q, live.column("sets")[found], 10)  # as held: fp16
    two = live.search(q, 10, candidates=40)
    assert torch.equal(two[0], scores) and torch.equal(two[1], found[index])  # exact over the candidates
    assert not two.exact and live.search(q, 10).exact  # the answer says which it was
    assert two[1][-1, :3].tolist() == [3, 7, N - 3]  # ties to the lower index, as in one search
    exact = live.search(q, 20)
    every = live.search(q, 20, candidates=N)
    assert [torch.equal(a, b) for a, b in zip(every, exact)] == [True, True] and every.exact


def test_few_candidates_find_most_of_the_top_10_and_never_an_excluded_or_erased_item(segmented, tmp_path):
    live = LiveGallery(tmp_path / "live", segmented, ann="set", nprobe=8)
    q = queries(32)
    exact = live.search(q, 10)[1]
    two = live.search(q, 10, candidates=100)[1]
    recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(exact, two)])
    assert recall >= 0.8, recall  # 100 of 1200 a query (clustered data: people in four views)
    gone = exact[:, 0].tolist()
    live.erase(paths=[f"cam{i % 3}/{i}.jpg" for i in gone])
    scores, index = live.search(q, 10, cameras=["c1"], since="1970-01-01T00:05:00Z", candidates=100)
    assert index.numel() and not set(index.flatten().tolist()) & set(gone)
    assert all(i % 3 == 1 and i >= 300 for i in index.flatten().tolist())
    new = F.normalize(torch.randn(2, 3, 16), dim=-1)
    added = live.add(new, ["new/a.jpg", "new/b.jpg"], [900, 901], ["c1", "c1"])
    assert live.search(new, 1, candidates=10)[1][:, 0].tolist() == added  # additions: scanned exactly


def test_the_id_selectors_keep_exactly_the_ids_in_range_and_allowed(segmented, tmp_path):
    live = LiveGallery(tmp_path / "live", segmented, ann="set")
    index, q = live.blocks[0].ann, queries().numpy()
    allowed = np.arange(203 - 100) % 3 == 0  # a range whose end is off a byte of the bitmap
    got = candidates(index, q, 500, "set", 1000, within=(100, 203), allowed=allowed)
    assert got.tolist() == (100 + np.flatnonzero(allowed)).tolist()  # every list visited: all of them
    assert candidates(index, q, 500, "set", 1000, within=(490, 500)).tolist() == list(range(490, 500))


def test_a_filter_takes_its_candidates_from_the_items_it_keeps(segmented, tmp_path):
    """One camera in a time window keeps 34 items of one segment: 40 candidates from FAISS's id
    selector are all of them, so two-stage equals the exact filtered search (candidates drawn from
    the whole segment, then filtered, keep next to none)."""
    live = LiveGallery(tmp_path / "live", segmented, ann="set", nprobe=64)
    q = queries(8)
    window = dict(cameras=["c1"], since="1970-01-01T00:05:00Z", until="1970-01-01T00:06:40Z")
    exact = live.search(q, 10, **window)
    assert [torch.equal(a, b) for a, b in zip(live.search(q, 10, candidates=40, **window), exact)] == [True, True]
    live.erase(paths=[f"cam1/{i}.jpg" for i in exact[1][:, 0].tolist()])  # erasures: kept out by the selector too
    exact = live.search(q, 10, **window)
    assert [torch.equal(a, b) for a, b in zip(live.search(q, 10, candidates=40, **window), exact)] == [True, True]


@pytest.mark.parametrize("set_dtype", ["float16", "int8"])
def test_the_base_sets_stay_memory_mapped_on_the_host_and_additions_mix_in(tmp_path, set_dtype):
    """Two-stage keeps the base segments' sets as their files' memory maps (no float32 copy of the
    gallery, on a GPU none on the device) and gathers the candidates' rows; 8-bit with its scales."""
    sets = people(N)
    path = save_gallery(tmp_path / "g", sets, torch.arange(N) // 4, [f"{i}.jpg" for i in range(N)], "fp", 16.0, 1.0,
                        segment_size=SEGMENT, set_dtype=set_dtype)
    build_gallery_indexes(path, progress=lambda _: None)
    exact = LiveGallery(tmp_path / "exact", path, dtype=torch.float32)
    live = LiveGallery(tmp_path / "live", path, dtype=torch.float32, ann="set", nprobe=64)
    held = live.blocks[0].view("sets")
    assert held.dtype == (torch.int8 if set_dtype == "int8" else torch.float16)  # as stored: not converted
    added = live.add(sets[:2].flip(1), ["new/a.jpg", "new/b.jpg"])  # an addition block, in float32
    assert exact.add(sets[:2].flip(1), ["new/a.jpg", "new/b.jpg"]) == added
    q = torch.cat([queries(), sets[:2].flip(1)])
    for k in (1, 10):
        two, full = live.search(q, k, candidates=N), exact.search(q, k)
        assert torch.equal(two[1], full[1]) and torch.allclose(two[0], full[0], atol=1e-3)
    assert live.search(q, 1, candidates=30)[1][-2:, 0].tolist() == added
    assert torch.allclose(live.sets_of(torch.tensor([0, added[0]])), exact.sets_of(torch.tensor([0, added[0]])),
                          atol=1e-6)


def test_a_ranking_merged_from_shards_is_exact_where_every_shards_is():
    from serving.client import Hit, Ranking, merge
    exact, approximate = Ranking([Hit(1, 0.9, 0, "a.jpg", 0)]), Ranking([Hit(1, 0.8, 1, "b.jpg", 5)], exact=False)
    merged = merge([[exact], [approximate]], 2)[0]
    assert [h.index for h in merged] == [0, 5] and [h.rank for h in merged] == [1, 2] and not merged.exact
    assert merge([[exact], [exact]], 2)[0].exact


def test_a_missing_or_corrupt_index_makes_its_segment_exact_with_one_line(segmented, tmp_path):
    g = load_gallery(segmented, with_sets=False)
    copy = save_gallery(tmp_path / "g", load_gallery(segmented).sets, g.ids, list(g.paths), "fp", 16.0, 1.0,
                        segment_size=SEGMENT)
    build_gallery_indexes(copy, "global", progress=lambda _: None)
    files = [s.file for s in load_gallery(copy, with_sets=False).segments]
    index_path(files[0], "global").write_bytes(b"not a faiss index")
    index_path(files[1], "global").unlink()
    index_path(files[2], "global").write_bytes(index_path(files[2], "global").read_bytes())  # fine
    live = LiveGallery(tmp_path / "live", copy, ann="global", nprobe=64)
    assert len(live.ann_notes) == 2
    assert "not a readable FAISS index" in live.ann_notes[0] and "searched exactly" in live.ann_notes[0]
    assert "no ANN index" in live.ann_notes[1]
    index_path(files[2], "set").write_bytes(index_path(files[2], "global").read_bytes())  # a misnamed file
    other = LiveGallery(tmp_path / "other", copy, ann="set")
    assert len(other.ann_notes) == 3
    assert "vectors of 16 values, not the set proxy of 16-value rows" in other.ann_notes[2]
    q = queries()
    assert [torch.equal(a, b) for a, b in zip(live.search(q, 20, candidates=N), live.search(q, 20))] == [True, True]
    exact = live.search(q, 3)[1]
    two = live.search(q, 3, candidates=1)[1]  # segments 0 and 1 scanned, 2 through its index: 1 a query
    for e, t in zip(exact.tolist(), two.tolist()):  # a subset of the items keeps their exact top-3 in its own
        assert {i for i in e if i < 2 * SEGMENT} <= set(t)


@pytest.mark.slow
def test_the_server_searches_in_two_stages_as_the_library_does(esa_export, gallery, tmp_path):
    """`tbps ann` then `tbps repo --two-stage`: LIKE queries (an item's stored sets, no margin)
    answered by the real server equal the in-process two-stage search over the served files."""
    from export.gallery_writer import install_gallery
    from serving.client import SearchClient
    from serving.launch import TritonServer
    from serving.live_store import GALLERY_FILE, LIVE_FOLDER
    from serving.repository import write_repository
    from tests.conftest import run_command
    copy = install_gallery(load_gallery(gallery), tmp_path / "gallery")
    run_command("serving.cli", "ann", copy, "--factory", "IVF2,Flat")  # the test gallery holds 8 images
    repo = write_repository(esa_export, copy, tmp_path / "repo", max_batch_size=8, two_stage=3, nprobe=1)
    served = repo / "gallery_search" / "1"
    live = LiveGallery(served / LIVE_FOLDER, served / GALLERY_FILE, writer=False, dtype=torch.float32, ann="set",
                       nprobe=1)
    assert live.ann_notes == [] and len(live) > 3
    items = [0, 5, len(live) - 1]  # 3 candidates of 8 items a query: the index path
    with TritonServer(repo) as server, SearchClient(server.grpc_url) as client:
        hits = client.like(items, k=3)
        scores, index = live.search(live.take("sets", torch.tensor(items)).float(), 3, candidates=3)
        assert [[h.index for h in row] for row in hits] == index.tolist()
        assert [row.exact for row in hits] == [False] * 3  # the candidates came from the index
        assert [row.exact for row in client.like(items, k=8)] == [True] * 3  # all 8 a query: the exact search
        assert np.allclose([[h.score for h in row] for row in hits], scores.numpy())
        assert "ANN index" not in server.log_tail(200)
