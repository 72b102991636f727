"""The portable repository served by a real tritonserver, queried over gRPC."""
import asyncio

import numpy as np
import pytest
import torch

import kernels
from export.gallery import load_gallery
from export.ort_encoders import OnnxEncoders
from serving.client import AsyncSearchClient, SearchClient, SearchError
from trainer.data.tokenizer import Tokenizer

pytestmark = pytest.mark.slow


def in_process(esa_export, gallery_path, texts, k):
    """What the ensemble computes, without a server: ONNX Runtime text encoder + kernels.search."""
    encoders = OnnxEncoders(esa_export)
    ids = Tokenizer(esa_export / encoders.manifest["tokenizer"]["file"])(texts)
    g = load_gallery(gallery_path)
    return kernels.search(torch.from_numpy(encoders.encode_text(ids)), g.sets.float(), k,
                          alpha=g.alpha, weight=g.weight, margin=g.margin), g


def test_results_equal_kernels_search_in_process(server, esa_export, gallery, captions):
    with SearchClient(server.grpc_url) as client:
        results = client.search(captions, k=5)
    (scores, index), g = in_process(esa_export, gallery, captions, 5)
    assert [[h.index for h in hits] for hits in results] == index.tolist()
    np.testing.assert_allclose([[h.score for h in hits] for hits in results], scores.numpy(), atol=1e-6)
    assert [[h.person_id for h in hits] for hits in results] == g.ids[index].tolist()
    assert results[0][0].path == g.paths[index[0, 0]] and results[0][0].rank == 1
    assert all(hits.exact for hits in results)  # no ANN index: the exact search, and the answer says so


def test_concurrent_captions_of_every_length_batch_and_answer_as_alone(server, esa_export, gallery, captions):
    """Requests padded to their own longest caption (2 to 77 tokens, truncated ones too) meet in
    the text encoder's batches, padded to the longest: each answer is what the caption gets
    in-process alone."""
    words = " ".join(captions).split()
    texts = [" ".join(words[:n]) for n in (1, 3, 8, 20, 40, 120)] + captions[:6]

    async def run():
        async with AsyncSearchClient(server.grpc_url) as client:
            return await asyncio.gather(*(client.search(t, k=5) for t in texts * 4))
    answers = asyncio.run(run())
    (scores, index), _ = in_process(esa_export, gallery, texts, 5)  # full 77-token rows, in one batch
    for i, text in enumerate(texts * 4):
        row = i % len(texts)
        assert [h.index for h in answers[i][0]] == index[row].tolist(), text
        np.testing.assert_allclose([h.score for h in answers[i][0]], scores[row].numpy(), atol=1e-5)


def test_a_bad_text_fails_its_own_request_only_in_a_shared_batch(server, esa_export, gallery, captions):
    """Requests sent together batch in the text encoder, which tokenizes them: one with an empty
    caption gets its error, the others of its batch their answers."""
    texts = [" " if i % 3 == 1 else captions[i] for i in range(12)]

    async def run():
        async with AsyncSearchClient(server.grpc_url) as client:
            return await asyncio.gather(*(client.search(t, k=5) for t in texts), return_exceptions=True)
    answers = asyncio.run(run())
    (_, index), _ = in_process(esa_export, gallery, captions[:12], 5)
    for i, answer in enumerate(answers):
        if texts[i] == " ":
            assert isinstance(answer, SearchError) and "text 0 is empty" in str(answer)
        else:
            assert [h.index for h in answer[0]] == index[i].tolist()


def test_a_list_longer_than_the_servers_batch_limit_is_split_by_the_client(server, esa_export, gallery, captions):
    """The client reads max_batch_size from the server's ensemble config (here 8), whatever the
    repository was written with: 20 texts go as 8 + 8 + 4, sync and async alike."""
    import tritonclient.grpc as grpcclient
    texts = (captions * 2)[:20]
    config = grpcclient.InferenceServerClient(server.grpc_url).get_model_config("person_search").config
    assert config.max_batch_size == 8
    (scores, index), _ = in_process(esa_export, gallery, texts, 3)
    with SearchClient(server.grpc_url) as client:
        results = client.search(texts, k=3)

    async def run():
        async with AsyncSearchClient(server.grpc_url) as client:
            return await client.search(texts, k=3)
    for hits in (results, asyncio.run(run())):
        assert [[h.index for h in row] for row in hits] == index.tolist()
        np.testing.assert_allclose([[h.score for h in row] for row in hits], scores.numpy(), atol=1e-6)


def test_metrics_count_the_ensembles_requests(server):
    """Triton's Prometheus endpoint (on loopback): one success per request of the ensemble, and
    the counters the README says to watch."""
    import re
    import time
    import urllib.request

    def read():
        text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
        found = re.findall(r'^(nv_inference_\w+)\{model="person_search",(?:reason="(\w+)",)?version="1"\} (\d+)',
                           text, re.M)
        return {(name, reason): int(value) for name, reason, value in found}

    def counters():  # settled: a request of an earlier test may be counted a moment after its answer
        last, now = None, read()
        while now != last:
            time.sleep(0.3)
            last, now = now, read()
        return now
    assert server.metrics_url.startswith("http://127.0.0.1:")
    before = counters()
    with SearchClient(server.grpc_url) as client:
        for _ in range(3):
            client.search("a man in a blue shirt", k=2)
        with pytest.raises(SearchError):
            client.search(" ", k=2)
    after = counters()
    grown = {key: after[key] - before.get(key, 0) for key in after}
    failures = sum(n for (name, _), n in grown.items() if name == "nv_inference_request_failure")
    # (server 2.51 counts a request refused inside the ensemble twice, as reason OTHER)
    assert grown[("nv_inference_request_success", "")] == 3 and failures >= 1
    assert ("nv_inference_queue_duration_us", "") in grown and grown[("nv_inference_compute_infer_duration_us", "")] > 0


def test_async_client_gives_the_same_answers(server, captions):
    async def run():
        async with AsyncSearchClient(server.grpc_url) as client:
            return await asyncio.gather(*(client.search(c, k=3) for c in captions[:6]))
    concurrent = [r[0] for r in asyncio.run(run())]
    with SearchClient(server.grpc_url) as client:
        one_by_one = [client.search(c, k=3)[0] for c in captions[:6]]
    # concurrent requests are batched together by the encoder: equal up to float rounding
    assert [[h.index for h in r] for r in concurrent] == [[h.index for h in r] for r in one_by_one]
    np.testing.assert_allclose([[h.score for h in r] for r in concurrent],
                               [[h.score for h in r] for r in one_by_one], atol=1e-5)


def test_topk_larger_than_the_gallery_returns_every_image(server, gallery):
    with SearchClient(server.grpc_url) as client:
        hits = client.search("a person", k=10_000)[0]
    assert len(hits) == len(load_gallery(gallery)) and len({h.index for h in hits}) == len(hits)


@pytest.mark.parametrize("texts,message", [
    ([""], "text 0 is empty"),
    (["   \t\n"], "text 0 is empty"),
    (["a man " * 20_000], "text 0 is 120000 bytes long; at most 4096"),
    (["a woman in a red coat", " "], "text 1 is empty"),
])
def test_bad_texts_get_a_specific_error_and_the_server_keeps_answering(server, texts, message):
    with SearchClient(server.grpc_url) as client:
        with pytest.raises(SearchError, match=message):
            client.search(texts, k=3)
        assert len(client.search("a woman in a red coat", k=3)[0]) == 3


@pytest.mark.parametrize("k", [0, -4])
def test_topk_below_one_is_refused(server, k):
    with SearchClient(server.grpc_url) as client:
        with pytest.raises(SearchError, match=f"TOPK must be at least 1, got {k}"):
            client.search("a man", k=k)


def raw_infer(server, text, topk, model="person_search", text_dtype="BYTES", text_shape=None):
    import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient(server.grpc_url)
    text_in = grpcclient.InferInput("TEXT", list(text_shape or text.shape), text_dtype)
    text_in.set_data_from_numpy(text)
    topk_in = grpcclient.InferInput("TOPK", list(topk.shape), "INT32")
    topk_in.set_data_from_numpy(topk)
    return client.infer(model, [text_in, topk_in])


def test_invalid_utf8_wrong_dtype_shape_and_model_are_refused(server):
    from tritonclient.utils import InferenceServerException
    one = np.ones((1, 1), np.int32)
    cases = [
        (dict(text=np.array([[b"\xff\xfe a man"]], dtype=object), topk=one), "text 0 is not valid UTF-8"),
        (dict(text=np.ones((1, 1), np.float32), topk=one, text_dtype="FP32"), "TEXT"),
        (dict(text=np.array([[b"a", b"b"]], dtype=object), topk=one), "TEXT"),
        (dict(text=np.array([[b"a man"]], dtype=object), topk=one, model="no_such_model"), "no_such_model"),
        (dict(text=np.array([[b"a man"], [b"a dog"]], dtype=object), topk=np.array([[2], [3]], np.int32)),
         "TOPK must be the same for every query"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InferenceServerException, match=message):
            raw_infer(server, **kwargs)
    assert raw_infer(server, np.array([[b"a man"]], dtype=object), one).as_numpy("SCORES").shape == (1, 1)


def test_server_listens_on_loopback_only(server):
    assert server.host == "127.0.0.1"
    assert "--grpc-address" in (cmd := server.command(server.repository)) and cmd[cmd.index("--grpc-address") + 1] == "127.0.0.1"
