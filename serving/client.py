"""gRPC clients of the served gallery (sync and asyncio, on tritonclient), over one server or a
gallery sharded across several: shards are queried concurrently and their top-k lists merged by
(score descending, global gallery index ascending), the order kernels.search uses, so S shards
answer exactly what one server holding the whole gallery answers.

Queries: descriptions (`search`, the person_search ensemble), images (`search_images`,
image_search) or gallery items (`like`, gallery_search's LIKE: one server), each with an
optional Filter (cameras, a time window). Changes: `ingest` (to the shard with the fewest live
items) and `delete` (on every shard). What a change's reply acknowledges is on disk.

    tbps search "a woman in a red coat" -k 10 [--camera C] [--since ISO] [--until ISO] [--url ...]
"""
from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace

import numpy as np

from export.gallery_meta import parse_time
from export.triton_config import ENSEMBLE, ERASE_MODEL, EXACT, GALLERY_MODEL, IMAGE_ENSEMBLE, INGEST_MODEL
from export.triton_config import RESULTS as RESULT_SPECS
from serving.topk_merge import top_positions


@dataclass(frozen=True)
class Credentials:
    """How a client proves itself: TLS (the CA that signed the server's certificate; a client
    certificate and key for mutual TLS) and an API key sent as the tbps-key header
    (serving/access.py). `user`/`client`: the person and address a front (the page) acts for."""
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    api_key: str | None = None
    user: str | None = None
    client: str | None = None

    def connection(self) -> dict:
        if not self.tls_ca and not self.tls_cert:
            return {}
        return {"ssl": True, "root_certificates": self.tls_ca, "private_key": self.tls_key,
                "certificate_chain": self.tls_cert}

    def headers(self) -> dict | None:
        from serving.access import CLIENT_HEADER, KEY_HEADER, USER_HEADER
        found = {h: v for h, v in ((KEY_HEADER, self.api_key), (USER_HEADER, self.user),
                                   (CLIENT_HEADER, self.client)) if v}
        return found or None


NO_CREDENTIALS = Credentials()


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    person_id: int
    path: str
    index: int  # the image's index in the whole gallery
    camera: str = ""  # its camera's name, "" unknown
    time: str = ""    # when it was taken, ISO 8601 UTC, "" unknown


class Ranking(list):
    """A query's hits, best first; `exact` False when the server's two-stage search took them from
    an ANN index's candidates (they may then miss some of the exact search's top-k)."""

    def __init__(self, hits=(), exact: bool = True):
        super().__init__(hits)
        self.exact = exact


@dataclass(frozen=True)
class Ingested:
    path: str
    index: int | None  # its global index; None: refused, see error
    error: str = ""


class SearchError(RuntimeError):
    """The server refused or failed a request; the message is the server's."""


@dataclass(frozen=True)
class Filter:
    """Which items a query may return: any of `cameras` (none: every camera) taken within
    [since, until] (ISO 8601; UTC unless it says otherwise; None: open)."""
    cameras: tuple[str, ...] = ()
    since: str | None = None
    until: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "cameras", tuple(self.cameras))
        bounds = [None if t is None else parse_time(t) for t in (self.since, self.until)]  # ValueError: says why
        if None not in bounds and bounds[0] > bounds[1]:
            raise ValueError(f"the time window is empty: since {self.since} is after until {self.until}")

    def inputs(self, module, rows: int) -> list:
        out = []
        if self.cameras:
            out.append(_bytes_input(module, "CAMERAS", [list(self.cameras)] * rows))
        for name, value in (("SINCE", self.since), ("UNTIL", self.until)):
            if value is not None:
                out.append(_bytes_input(module, name, [[value]] * rows))
        return out


NO_FILTER = Filter()
# a query kind: (model, input name); its values are str (TEXT), bytes (IMAGE) or int (LIKE)
TEXTS, IMAGES, ITEMS = (ENSEMBLE, "TEXT"), (IMAGE_ENSEMBLE, "IMAGE"), (GALLERY_MODEL, "LIKE")


def _bytes_input(module, name: str, rows: list[list]):
    array = np.array([[v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in row] for row in rows],
                     dtype=object)
    tensor = module.InferInput(name, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


def _inputs(module, kind: tuple[str, str], values: list, k: int, flt: Filter) -> list:
    name = kind[1]
    if name == "LIKE":
        query = module.InferInput(name, [len(values), 1], "INT64")
        query.set_data_from_numpy(np.array(values, dtype=np.int64).reshape(-1, 1))
    else:
        query = _bytes_input(module, name, [[v] for v in values])
    topk = module.InferInput("TOPK", [len(values), 1], "INT32")
    topk.set_data_from_numpy(np.full((len(values), 1), k, dtype=np.int32))
    return [query, topk, *flt.inputs(module, len(values))]


def _check_values(kind: tuple[str, str], values) -> list:
    want = {"TEXT": str, "IMAGE": bytes, "LIKE": int}[kind[1]]
    values = [values] if isinstance(values, want) else list(values)
    if not all(isinstance(v, want) and not isinstance(v, bool) for v in values):
        raise TypeError(f"expected {want.__name__} or a list of {want.__name__}")
    return values


RESULTS = [r["name"] for r in RESULT_SPECS]  # the order of Hit's fields


def _outputs(module) -> list:
    return [module.InferRequestedOutput(n) for n in (*RESULTS, EXACT["name"])]


def _hits(result) -> list[Ranking]:
    return [Ranking([Hit(r + 1, float(s), int(p), path.decode("utf-8"), int(i), c.decode("utf-8"), t.decode("utf-8"))
                     for r, (s, p, path, i, c, t) in enumerate(zip(*row))], bool(exact[0]))
            for *row, exact in zip(*map(result.as_numpy, (*RESULTS, EXACT["name"])))]


def merge(per_shard: list[list[Ranking]], k: int) -> list[Ranking]:
    """Per query, the k best hits over all shards, ranked again (serving/topk_merge.py); exact
    where every shard's was."""
    merged = []
    for hits in zip(*per_shard):
        pool = [h for shard in hits for h in shard]
        scores = np.array([[h.score for h in pool]], dtype=np.float32)
        picks = top_positions(scores, np.array([[h.index for h in pool]], dtype=np.int64), k)[0]
        merged.append(Ranking([replace(pool[p], rank=r + 1) for r, p in enumerate(picks)],
                              all(shard.exact for shard in hits)))
    return merged


def _chunks(values: list, max_batch: int):
    """The server's max_batch_size (its model config's) bounds a request: longer lists take several."""
    for start in range(0, len(values), max_batch):
        yield values[start:start + max_batch]


def _ingest_inputs(module, images: list[bytes], paths: list[str], persons, cameras, times) -> list:
    person = module.InferInput("PERSON", [len(paths), 1], "INT64")
    person.set_data_from_numpy(np.array(persons, dtype=np.int64).reshape(-1, 1))
    return [_bytes_input(module, "IMAGE", [[bytes(i)] for i in images]),
            _bytes_input(module, "PATH", [[p] for p in paths]), person,
            _bytes_input(module, "CAMERA", [[c or ""] for c in cameras]),
            _bytes_input(module, "TIME", [[t or ""] for t in times])]


class SearchClient:
    """Blocking client; `urls` is one "host:port" or a list of shards' (queried in parallel)."""

    def __init__(self, urls: str | list[str], timeout: float | None = 60.0,
                 credentials: Credentials = NO_CREDENTIALS):
        import tritonclient.grpc as grpcclient
        self._module = grpcclient
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.timeout, self.headers = timeout, credentials.headers()
        self.clients = [grpcclient.InferenceServerClient(u, **credentials.connection()) for u in self.urls]
        self._max_batch: dict = {}  # (client, model) -> its max_batch_size, asked once
        self._pool = ThreadPoolExecutor(max(1, len(self.clients)))

    def _call(self, fn):
        from tritonclient.utils import InferenceServerException
        try:
            return fn()
        except InferenceServerException as e:
            raise SearchError(e.message()) from None

    def _batch(self, client, model: str) -> int:
        if (client, model) not in self._max_batch:
            config = client.get_model_config(model, headers=self.headers, client_timeout=self.timeout).config
            self._max_batch[client, model] = config.max_batch_size
        return self._max_batch[client, model]

    def _query_one(self, client, kind, values: list, k: int, flt: Filter) -> list[Ranking]:
        def run():
            hits = []
            for chunk in _chunks(values, self._batch(client, kind[0])):
                hits += _hits(client.infer(kind[0], _inputs(self._module, kind, chunk, k, flt),
                                           outputs=_outputs(self._module), headers=self.headers,
                                           client_timeout=self.timeout))
            return hits
        return self._call(run)

    def _query(self, kind, values, k: int, flt: Filter | None) -> list[Ranking]:
        values, flt = _check_values(kind, values), flt or NO_FILTER
        per_shard = list(self._pool.map(lambda c: self._query_one(c, kind, values, k, flt), self.clients))
        return per_shard[0] if len(per_shard) == 1 else merge(per_shard, k)

    def search(self, texts: str | list[str], k: int = 10, filter: Filter | None = None) -> list[Ranking]:
        """Top-k hits of each text (one list per text); a single str gives one list too."""
        return self._query(TEXTS, texts, k, filter)

    def search_images(self, images: bytes | list[bytes], k: int = 10,
                      filter: Filter | None = None) -> list[Ranking]:
        """Top-k hits of each encoded image file (JPEG, PNG, ...) as the query."""
        return self._query(IMAGES, images, k, filter)

    def like(self, indices: int | list[int], k: int = 10, filter: Filter | None = None) -> list[Ranking]:
        """Top-k hits of gallery items (global indices, as hits give them) as the queries."""
        if len(self.clients) > 1:
            raise SearchError("search by a gallery item is served by one server, not across shards: "
                              "query with the item's image (search_images) instead")
        return self._query(ITEMS, indices, k, filter)

    def live_items(self) -> list[int]:
        """Each server's count of live (searchable) items."""
        def one(client):
            return int(self._call(lambda: client.infer(ERASE_MODEL, [], headers=self.headers,
                                                       client_timeout=self.timeout)).as_numpy(
                "LIVE")[0])
        return list(self._pool.map(one, self.clients))

    def ingest(self, images: list[bytes], paths: list[str], persons=None, cameras=None,
               times=None) -> list[Ingested]:
        """Add images (encoded files) under `paths`, with optional person ids, camera names and
        ISO 8601 times, to the shard holding the fewest live items. Per image: its global
        index once durable and searchable, or the server's reason for refusing it."""
        n = len(paths)
        if len(images) != n:
            raise ValueError(f"{len(images)} images for {n} paths")
        persons = [-1 if p is None else int(p) for p in (persons or [None] * n)]
        cameras, times = list(cameras or [None] * n), list(times or [None] * n)
        if not len(persons) == len(cameras) == len(times) == n:
            raise ValueError(f"persons, cameras and times must have one entry per path ({n})")
        client = self.clients[int(np.argmin(self.live_items()))] if len(self.clients) > 1 else self.clients[0]
        done = []
        for rows in _chunks(list(range(n)), self._call(lambda: self._batch(client, INGEST_MODEL))):
            pick = [[seq[r] for r in rows] for seq in (images, paths, persons, cameras, times)]
            result = self._call(lambda: client.infer(INGEST_MODEL, _ingest_inputs(self._module, *pick),
                                                     headers=self.headers, client_timeout=self.timeout))
            for r, i, e in zip(rows, result.as_numpy("INDEX").reshape(-1), result.as_numpy("ERROR").reshape(-1)):
                done.append(Ingested(paths[r], None if i < 0 else int(i), e.decode("utf-8")))
        return done

    def delete(self, paths=(), persons=()) -> list[int]:
        """Erase the items with these paths or person ids on every shard, durably; the global
        indices erased (empty: nothing matched)."""
        paths, persons = [str(p) for p in paths], [int(p) for p in persons]
        if not paths and not persons:
            raise ValueError("name the paths or person ids to erase")

        def one(client):
            inputs = []
            if paths:
                inputs.append(self._module.InferInput("PATHS", [len(paths)], "BYTES"))
                inputs[-1].set_data_from_numpy(np.array([p.encode("utf-8") for p in paths], dtype=object))
            if persons:
                inputs.append(self._module.InferInput("PERSONS", [len(persons)], "INT64"))
                inputs[-1].set_data_from_numpy(np.array(persons, dtype=np.int64))
            return self._call(lambda: client.infer(ERASE_MODEL, inputs, headers=self.headers,
                                                   client_timeout=self.timeout)).as_numpy(
                "ERASED").tolist()
        return sorted(i for erased in self._pool.map(one, self.clients) for i in erased)

    def close(self) -> None:
        self._pool.shutdown()
        for c in self.clients:
            c.close()

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncSearchClient:
    """asyncio client of the queries, same interface with `await client.search(...)`."""

    def __init__(self, urls: str | list[str], timeout: float | None = 60.0,
                 credentials: Credentials = NO_CREDENTIALS):
        import tritonclient.grpc.aio as aioclient
        self._module = aioclient
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.timeout, self.credentials = timeout, credentials
        self.clients = [aioclient.InferenceServerClient(u, **credentials.connection()) for u in self.urls]
        self._max_batch: dict = {}  # (client, model) -> its max_batch_size, asked once

    def _headers(self, caller: dict | None) -> dict | None:
        """The client's credentials, naming the person and address it acts for (a page's user)."""
        if not caller:
            return self.credentials.headers()
        return replace(self.credentials, user=caller.get("user"), client=caller.get("client")).headers()

    async def _query_one(self, client, kind, values: list, k: int, flt: Filter,
                         caller: dict | None) -> list[Ranking]:
        from tritonclient.utils import InferenceServerException
        hits, headers = [], self._headers(caller)
        try:
            if (client, kind[0]) not in self._max_batch:
                config = (await client.get_model_config(kind[0], headers=headers,
                                                        client_timeout=self.timeout)).config
                self._max_batch[client, kind[0]] = config.max_batch_size
            for chunk in _chunks(values, self._max_batch[client, kind[0]]):
                result = await client.infer(kind[0], _inputs(self._module, kind, chunk, k, flt),
                                            outputs=_outputs(self._module), headers=headers,
                                            client_timeout=self.timeout)
                hits += _hits(result)
        except InferenceServerException as e:
            raise SearchError(e.message()) from None
        return hits

    async def _query(self, kind, values, k: int, flt: Filter | None, caller: dict | None) -> list[Ranking]:
        values, flt = _check_values(kind, values), flt or NO_FILTER
        per_shard = await asyncio.gather(*(self._query_one(c, kind, values, k, flt, caller) for c in self.clients))
        return per_shard[0] if len(per_shard) == 1 else merge(list(per_shard), k)

    async def search(self, texts: str | list[str], k: int = 10, filter: Filter | None = None,
                     caller: dict | None = None) -> list[Ranking]:
        """As SearchClient.search; `caller`: {"user", "client"} a front acts for (the audit's who)."""
        return await self._query(TEXTS, texts, k, filter, caller)

    async def search_images(self, images: bytes | list[bytes], k: int = 10,
                            filter: Filter | None = None, caller: dict | None = None) -> list[Ranking]:
        return await self._query(IMAGES, images, k, filter, caller)

    async def like(self, indices: int | list[int], k: int = 10, filter: Filter | None = None,
                   caller: dict | None = None) -> list[Ranking]:
        if len(self.clients) > 1:
            raise SearchError("search by a gallery item is served by one server, not across shards: "
                              "query with the item's image (search_images) instead")
        return await self._query(ITEMS, indices, k, filter, caller)

    async def close(self) -> None:
        for c in self.clients:
            await c.close()

    async def __aenter__(self) -> AsyncSearchClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def print_hits(texts: list[str], results: list[Ranking], as_json: bool = False) -> None:
    if as_json:
        print(json.dumps([{"text": t, "exact": hits.exact, "hits": [asdict(h) for h in hits]}
                          for t, hits in zip(texts, results)], indent=2))
        return
    for text, hits in zip(texts, results):
        print(f"{text}" + ("" if hits.exact else "  (two-stage: may miss some of the exact top-k)"))
        where = any(h.camera or h.time for h in hits)  # camera and time columns where the gallery has them
        print(f"  {'rank':>4}  {'score':>7}  {'person':>6}  " + (f"{'camera':10}  {'time':24}  " if where else "")
              + "image")
        for h in hits:
            print(f"  {h.rank:4d}  {h.score:7.4f}  {h.person_id:6d}  " + (f"{h.camera:10}  {h.time:24}  " if where
                                                                        else "") + h.path)
