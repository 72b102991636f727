"""Triton model `gallery_search` over local shards (`tbps repo --local-shards S`): the contract of
serving/models/gallery_search.py (a query + TOPK and an optional filter -> SCORES, IDS, PATHS,
INDICES, CAMERA_NAMES, TIMES), answered by the shards gallery_search_0 .. S-1, each holding a
contiguous slice of the gallery on its own GPU, and merged here inside the server: any Triton
client (gRPC, HTTP/KServe v2, any language) and both ensembles get the global top-k.

Each request goes to every shard at once (BLS async_exec); the shards return global indices, and
their lists are merged by (score descending, global index ascending), the order of one search
over the whole gallery (serving/topk_merge.py), so ties fall exactly as they would unsharded.
A LIKE row is first resolved to its item's sets by the shard that holds it (QUERY_SETS), then
searched on every shard as an image query (LIKE takes no margin either). A shard's refusal (bad
TOPK, an unknown camera, an erased item) is the request's error, in the shard's words. CPU only:
it moves a few rows per query; the search runs in the shards.
"""
from __future__ import annotations

import asyncio
import json

import numpy as np

from export.triton_config import EXACT, QUERY_SETS, RESULTS
from serving.models.common import (AccessRefused, Guard, error_response, input_array, parameters, refusal,
                                   request_parameters, search_record, unrecorded)
from serving.topk_merge import top_positions

OUTPUTS = [r["name"] for r in RESULTS]
NO_SUCH_ITEM = "no such item in this gallery"  # gallery_search's words for another shard's LIKE item


class ShardError(Exception):
    """A shard refused the request: its message is the answer."""


class TritonPythonModel:
    def initialize(self, args):
        import triton_python_backend_utils as pb_utils
        self.pb = pb_utils
        params = parameters(args)
        self.shards = json.loads(params["shards"])
        self.image_sets = json.loads(params["image_sets"])  # the image query's tensor: what LIKE becomes
        self.inputs = [i["name"] for i in json.loads(args["model_config"])["input"]]
        self.guard = Guard()
        self.guard.record([{"event": "load", "who": "server", "model": args["model_name"],
                            "version": int(args["model_version"]), "shards": self.shards}])

    async def _ask(self, shard: str, tensors: list, outputs: list[str], params: dict):
        pb = self.pb
        response = await pb.InferenceRequest(model_name=shard, inputs=tensors, requested_output_names=outputs,
                                             parameters=params,
                                             preferred_memory=pb.PreferredMemory(pb.TRITONSERVER_MEMORY_CPU, 0)
                                             ).async_exec()
        if response.has_error():
            raise ShardError(response.error().message())
        return {name: pb.get_output_tensor_by_name(response, name).as_numpy() for name in outputs}

    async def _item_sets(self, index: int, topk, params: dict) -> np.ndarray:
        """The sets [1, K, D] of gallery item `index`, from the one shard that holds it."""
        like = self.pb.Tensor("LIKE", np.array([[index]], dtype=np.int64))
        answers = await asyncio.gather(*(self._ask(s, [like, topk], [QUERY_SETS], params) for s in self.shards),
                                       return_exceptions=True)
        for answer in answers:
            if not isinstance(answer, BaseException):
                return answer[QUERY_SETS]
        for answer in answers:  # not a refusal: the failure itself
            if not isinstance(answer, ShardError):
                raise answer
        # every other shard answers NO_SUCH_ITEM: the holder's refusal (an erased item, a bad TOPK) says why
        raise next((a for a in answers if NO_SUCH_ITEM not in str(a)), answers[0])

    async def _search(self, request):
        """(the response, its audit record)."""
        pb = self.pb
        who = self.guard.admit(request, "viewer", "search")
        params = request_parameters(request)  # passed on: each shard checks the caller's key too
        given = {n: t for n in self.inputs if (t := pb.get_input_tensor_by_name(request, n)) is not None}
        for name in ("TEXT", "IMAGE"):  # the query as given, for the audit record here: the shards need the sets
            given.pop(name, None)
        if "LIKE" in given:  # each row resolved by its shard (the others refuse it at once), then an image query
            topk = pb.Tensor("TOPK", given["TOPK"].as_numpy()[:1])
            sets = await asyncio.gather(*(self._item_sets(int(i), topk, params)
                                          for i in given.pop("LIKE").as_numpy().reshape(-1)))
            name = self.image_sets["name"]
            given[name] = pb.Tensor(name, np.concatenate(sets).astype(self.image_sets["dtype"]))
        answers = await asyncio.gather(*(self._ask(s, list(given.values()), [*OUTPUTS, EXACT["name"]], params)
                                         for s in self.shards))
        merged = {n: np.concatenate([a[n] for a in answers], axis=1) for n in OUTPUTS}
        k = int(input_array(request, "TOPK").max())
        picks = top_positions(merged["SCORES"], merged["INDICES"], k)
        out = {n: np.take_along_axis(merged[n], picks, axis=1) for n in OUTPUTS}
        exact = np.logical_and.reduce([a[EXACT["name"]] for a in answers])  # exact where every shard's is
        return (pb.InferenceResponse([*(pb.Tensor(n, out[n]) for n in OUTPUTS), pb.Tensor(EXACT["name"], exact)]),
                search_record(request, who, k, out["INDICES"]))

    async def _answer(self, request):
        try:
            return await self._search(request)
        except AccessRefused as e:
            return error_response(str(e)), refusal(e, "search")
        except ShardError as e:
            return error_response(str(e)), None
        except Exception as e:  # a shard down or failing: this request's error, the others go on
            return error_response(f"gallery_search: a shard failed: {e}"), None

    async def execute(self, requests):
        answered = await asyncio.gather(*(self._answer(r) for r in requests))
        try:
            self.guard.record([record for _, record in answered if record is not None])  # before any answer leaves
        except OSError as e:
            return unrecorded(e, requests)
        return [response for response, _ in answered]
