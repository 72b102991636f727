"""One server, its gallery split over its GPUs (`--local-shards`; here CPU instances stand in for
the GPUs): gallery_search merges the shards inside the server, so any Triton client (gRPC,
HTTP/KServe v2 with no tritonclient at all) gets exactly what one unsharded server answers. The
server checks keys: the merge passes the caller's on, and each shard checks it too."""
import json
import urllib.request

import numpy as np
import pytest

from serving.client import Credentials, SearchClient, SearchError
from serving.launch import Security, TritonServer
from tests.serving.conftest import MAX_BATCH

pytestmark = pytest.mark.slow

SHARDS = 2


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from serving.access import add_key
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    return path, add_key(path, "otto", "operator")


@pytest.fixture(scope="module")
def local(esa_export, gallery, keys, tmp_path_factory):
    from serving.repository import write_repository
    repo = write_repository(esa_export, gallery, tmp_path_factory.mktemp("local") / "repo", max_batch_size=MAX_BATCH,
                            local_shards=SHARDS)
    with TritonServer(repo, security=Security(keys_file=str(keys[0]))) as running:
        yield running  # its repository: running.repository


def client(server, keys) -> SearchClient:
    return SearchClient(server.grpc_url, credentials=Credentials(api_key=keys[1]))


def kserve_infer(server, model: str, inputs: list[dict], key: str | None = None) -> dict:
    """A plain HTTP POST of the KServe v2 protocol: what curl, or a client in any language, sends."""
    request = urllib.request.Request(f"http://{server.host}:{server.http_port}/v2/models/{model}/infer",
                                     data=json.dumps({"inputs": inputs}).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **({"tbps-key": key} if key else {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return {o["name"]: o["data"] for o in json.load(response)["outputs"]}
    except urllib.error.HTTPError as e:
        return {"error": json.load(e)["error"]}


def test_every_client_gets_the_global_top_k_from_one_sharded_server(local, keys, server, gallery, captions):
    from export.gallery import load_gallery
    n = len(load_gallery(gallery, with_sets=False))
    # one request of MAX_BATCH texts: each shard then searches the same batch as the single server
    texts = captions[:MAX_BATCH]
    with client(local, keys) as sharded, SearchClient(server.grpc_url) as single:
        for k in (1, 5, 1000):  # 1000: every item of both shards, ties and all
            answer = sharded.search(texts, k=k)
            assert answer == single.search(texts, k=k) and all(hits.exact for hits in answer)
        items = [n - 1, 0, n // 2]  # LIKE rows whose items lie in different shards, in one request
        assert sharded.like(items, k=7) == single.like(items, k=7)
        expected = single.search(texts[:1], k=5)[0]
    answer = kserve_infer(local, "person_search", [
        {"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": [texts[0]]},
        {"name": "TOPK", "shape": [1, 1], "datatype": "INT32", "data": [5]}], keys[1])
    assert answer["INDICES"] == [h.index for h in expected] and answer["PATHS"] == [h.path for h in expected]
    assert np.allclose(answer["SCORES"], [h.score for h in expected])


def test_bad_input_gets_the_shards_own_words_and_the_server_keeps_serving(local, keys, gallery, captions):
    from export.gallery import load_gallery
    n = len(load_gallery(gallery, with_sets=False))
    text = [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": [captions[0]]}]
    with client(local, keys) as sharded:
        with pytest.raises(SearchError, match=f"LIKE {n + 5}: no such item in this gallery"):
            sharded.like([0, n + 5], k=3)
        answer = kserve_infer(local, "person_search", text + [
            {"name": "TOPK", "shape": [1, 1], "datatype": "INT32", "data": [0]}], keys[1])
        assert "TOPK must be at least 1, got 0" in answer["error"]
        answer = kserve_infer(local, "person_search", text + [
            {"name": "TOPK", "shape": [1, 1], "datatype": "INT32", "data": [3]}])
        assert "permission denied: search needs a key" in answer["error"]
        assert len(sharded.search(captions[0], k=3)[0]) == 3


def test_ingest_goes_to_the_least_full_shard_and_erasure_finds_its_item(local, keys, synthetic_data, gallery,
                                                                          captions):
    from export.gallery import load_gallery
    from serving.shards import LOCAL_ADDED_RANGE
    from trainer.data.formats import load_dataset
    n = len(load_gallery(gallery, with_sets=False))
    sizes = [n // SHARDS, n - n // SHARDS]  # the split: near-equal contiguous slices
    images = [e.path for e in load_dataset(synthetic_data).train[:3]]
    with client(local, keys) as operator:
        assert operator.live_items() == [n]
        done = [operator.ingest([f.read_bytes()], [f"new/{f.name}"])[0] for f in images]
        expected, held = [], list(sizes)
        for _ in done:  # the shard holding the fewest items (the first of equals), numbered in its range
            shard = held.index(min(held))
            expected.append(n + shard * LOCAL_ADDED_RANGE + held[shard] - sizes[shard])
            held[shard] += 1
        assert [d.index for d in done] == expected and {d.index >= n + LOCAL_ADDED_RANGE for d in done} == {True, False}
        assert operator.live_items() == [n + len(images)]
        for f, d in zip(images, done):
            assert operator.search_images(f.read_bytes(), k=1)[0][0].index == d.index
        refused = operator.ingest([images[1].read_bytes()], [f"new/{images[1].name}"])[0]  # live in another shard
        assert refused.index is None and "already in the gallery" in refused.error
        assert operator.delete(paths=[f"new/{images[1].name}", "no/such.jpg"]) == [done[1].index]
        hits = operator.search(captions[:MAX_BATCH], k=1000)
        assert all(h.index != done[1].index for row in hits for h in row)
        assert operator.live_items() == [n + len(images) - 1]
        before = operator.search(captions[:MAX_BATCH], k=1000)
    local.stop()  # compaction is offline: the shards' additions fold into their bases, numbered anew
    from serving.repository import compact_repository
    report = compact_repository(local.repository)
    assert (report["kept"], report["dropped"], report["added"]) == (n + 2, 1, 3)
    with TritonServer(local.repository) as again, SearchClient(again.grpc_url) as anyone:  # no keys this time
        after = anyone.search(captions[:MAX_BATCH], k=1000)
        assert [sorted((-h.score, h.path) for h in row) for row in after] == \
            [sorted((-h.score, h.path) for h in row) for row in before]  # the same ranking (ties aside)
        assert sorted(h.index for h in after[0]) == list(range(n + 2))  # one numbering, no gaps, no overlap
