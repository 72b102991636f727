"""A gallery sharded over 3 servers answers exactly what one server holding it all answers."""
import contextlib

import pytest

from serving.client import SearchClient
from serving.launch import TritonServer
from serving.shards import split_gallery, write_shard_repositories
from tests.serving.conftest import MAX_BATCH

pytestmark = pytest.mark.slow


def test_three_shards_equal_one_server(server, esa_export, gallery, captions, synthetic_data, tmp_path):
    # one request of MAX_BATCH texts: the CPU search of a 4-query remainder batch can differ from
    # one over a gallery slice in the last bit (reported to the kernels' owner)
    captions = captions[:MAX_BATCH]
    repos = write_shard_repositories(esa_export, gallery, 3, tmp_path, max_batch_size=MAX_BATCH)
    with contextlib.ExitStack() as stack:
        shards = [stack.enter_context(TritonServer(r)) for r in repos]
        with SearchClient([s.grpc_url for s in shards]) as sharded, SearchClient(server.grpc_url) as single:
            for k in (1, 5, 1000):
                assert sharded.search(captions, k=k) == single.search(captions, k=k)
            live_ingest_and_erase_span_the_shards(sharded, single, captions, synthetic_data, gallery)


def live_ingest_and_erase_span_the_shards(sharded, single, captions, synthetic_data, gallery):
    """Ingest goes to the shard with the fewest live items, under indices of its own; an erasure
    reaches every shard; around the additions, the ranking is still the single server's."""
    from serving.shards import ADDED_RANGE
    from trainer.data.formats import load_dataset
    sizes = sharded.live_items()
    n = sum(sizes)
    images = [e.path for e in load_dataset(synthetic_data).train[:3]]
    done = [sharded.ingest([f.read_bytes()], [f"new/{f.name}"])[0] for f in images]
    expected, held = [], list(sizes)
    for _ in done:  # each call to the shard then least full (the first of equals), numbered in its range
        shard = held.index(min(held))
        expected.append(n + shard * ADDED_RANGE + held[shard] - sizes[shard])
        held[shard] += 1
    assert [d.index for d in done] == expected
    assert sharded.live_items() == held
    for f, d in zip(images, done):
        assert sharded.search_images(f.read_bytes(), k=1)[0][0].index == d.index
    def base_only(results):
        return [[(h.score, h.index) for h in hits if h.index < n] for hits in results]
    assert base_only(sharded.search(captions, k=1000)) == base_only(single.search(captions, k=1000))
    person = single.search(captions[:1], k=1)[0][0].person_id
    erased = sharded.delete(paths=[f"new/{images[0].name}"], persons=[person])
    from export.gallery import load_gallery
    ids = load_gallery(gallery, with_sets=False).ids.tolist()
    assert sorted(erased) == sorted([i for i, p in enumerate(ids) if p == person] + [done[0].index])
    after = sharded.search(captions, k=1000)
    expected = [[(h.score, h.index) for h in hits if h.person_id != person] for hits in single.search(captions, k=1000)]
    assert base_only(after) == expected and all(h.index != done[0].index for hits in after for h in hits)


def test_split_covers_the_gallery_once(gallery, tmp_path):
    from export.gallery import load_gallery
    parts = split_gallery(gallery, 3, tmp_path)
    loaded = [load_gallery(p) for p, _ in parts]
    assert [offset for _, offset in parts] == [0, len(loaded[0]), len(loaded[0]) + len(loaded[1])]
    assert sum((g.paths for g in loaded), []) == load_gallery(gallery).paths
    with pytest.raises(ValueError, match="cannot split a gallery"):
        split_gallery(gallery, 10_000, tmp_path)
