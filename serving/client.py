"""gRPC clients of the `person_search` ensemble (sync and asyncio, on tritonclient), over one
server or a gallery sharded across several: shards are queried concurrently and their top-k
lists merged by (score descending, global gallery index ascending), the order kernels.search
uses, so S shards answer exactly what one server holding the whole gallery answers.

    tbps search "a woman in a red coat" -k 10 [--url 127.0.0.1:8001 ...] [--json]
"""
from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from export.triton_config import ENSEMBLE as MODEL


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    person_id: int
    path: str
    index: int  # the image's index in the whole gallery


class SearchError(RuntimeError):
    """The server refused or failed a query; the message is the server's."""


def _inputs(module, texts: list[str], k: int) -> list:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a list of str")
    text = module.InferInput("TEXT", [len(texts), 1], "BYTES")
    text.set_data_from_numpy(np.array([t.encode("utf-8") for t in texts], dtype=object).reshape(-1, 1))
    topk = module.InferInput("TOPK", [len(texts), 1], "INT32")
    topk.set_data_from_numpy(np.full((len(texts), 1), k, dtype=np.int32))
    return [text, topk]


def _outputs(module) -> list:
    return [module.InferRequestedOutput(n) for n in ("SCORES", "IDS", "PATHS", "INDICES")]


def _hits(result) -> list[list[Hit]]:
    scores, ids, paths, index = (result.as_numpy(n) for n in ("SCORES", "IDS", "PATHS", "INDICES"))
    return [[Hit(r + 1, float(s), int(p), path.decode("utf-8"), int(i))
             for r, (s, p, path, i) in enumerate(zip(*row))] for row in zip(scores, ids, paths, index)]


def merge(per_shard: list[list[list[Hit]]], k: int) -> list[list[Hit]]:
    """Per text, the k best hits over all shards, ranked again."""
    merged = []
    for hits in zip(*per_shard):
        best = sorted((h for shard in hits for h in shard), key=lambda h: (-h.score, h.index))[:k]
        merged.append([Hit(r + 1, h.score, h.person_id, h.path, h.index) for r, h in enumerate(best)])
    return merged


def _chunks(texts: list[str], max_batch: int):
    """The server's max_batch_size (its model config's) bounds a request: longer lists take several."""
    for start in range(0, len(texts), max_batch):
        yield texts[start:start + max_batch]


class SearchClient:
    """Blocking client; `urls` is one "host:port" or a list of shards' (queried in parallel)."""

    def __init__(self, urls: str | list[str], timeout: float | None = 60.0):
        import tritonclient.grpc as grpcclient
        self._module = grpcclient
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.timeout = timeout
        self.clients = [grpcclient.InferenceServerClient(u) for u in self.urls]
        self._max_batch: dict = {}  # client -> the ensemble's max_batch_size, asked once
        self._pool = ThreadPoolExecutor(max(1, len(self.clients)))

    def _search_one(self, client, texts: list[str], k: int) -> list[list[Hit]]:
        from tritonclient.utils import InferenceServerException
        hits = []
        try:
            if client not in self._max_batch:
                config = client.get_model_config(MODEL, client_timeout=self.timeout).config
                self._max_batch[client] = config.max_batch_size
            for chunk in _chunks(texts, self._max_batch[client]):
                result = client.infer(MODEL, _inputs(self._module, chunk, k), outputs=_outputs(self._module),
                                      client_timeout=self.timeout)
                hits += _hits(result)
        except InferenceServerException as e:
            raise SearchError(e.message()) from None
        return hits

    def search(self, texts: str | list[str], k: int = 10) -> list[list[Hit]]:
        """Top-k hits of each text (one list per text); a single str gives one list too."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        per_shard = list(self._pool.map(lambda c: self._search_one(c, texts, k), self.clients))
        return per_shard[0] if len(per_shard) == 1 else merge(per_shard, k)

    def close(self) -> None:
        self._pool.shutdown()
        for c in self.clients:
            c.close()

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncSearchClient:
    """asyncio client, same interface with `await client.search(...)`."""

    def __init__(self, urls: str | list[str], timeout: float | None = 60.0):
        import tritonclient.grpc.aio as aioclient
        self._module = aioclient
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.timeout = timeout
        self.clients = [aioclient.InferenceServerClient(u) for u in self.urls]
        self._max_batch: dict = {}  # client -> the ensemble's max_batch_size, asked once

    async def _search_one(self, client, texts: list[str], k: int) -> list[list[Hit]]:
        from tritonclient.utils import InferenceServerException
        hits = []
        try:
            if client not in self._max_batch:
                config = (await client.get_model_config(MODEL, client_timeout=self.timeout)).config
                self._max_batch[client] = config.max_batch_size
            for chunk in _chunks(texts, self._max_batch[client]):
                result = await client.infer(MODEL, _inputs(self._module, chunk, k), outputs=_outputs(self._module),
                                            client_timeout=self.timeout)
                hits += _hits(result)
        except InferenceServerException as e:
            raise SearchError(e.message()) from None
        return hits

    async def search(self, texts: str | list[str], k: int = 10) -> list[list[Hit]]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        per_shard = await asyncio.gather(*(self._search_one(c, texts, k) for c in self.clients))
        return per_shard[0] if len(per_shard) == 1 else merge(list(per_shard), k)

    async def close(self) -> None:
        for c in self.clients:
            await c.close()

    async def __aenter__(self) -> AsyncSearchClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def print_hits(texts: list[str], results: list[list[Hit]], as_json: bool = False) -> None:
    if as_json:
        print(json.dumps([{"text": t, "hits": [asdict(h) for h in hits]} for t, hits in zip(texts, results)],
                         indent=2))
        return
    for text, hits in zip(texts, results):
        print(f"{text}")
        print(f"  {'rank':>4}  {'score':>7}  {'person':>6}  image")
        for h in hits:
            print(f"  {h.rank:4d}  {h.score:7.4f}  {h.person_id:6d}  {h.path}")
