"""Triton model `gallery_search`: text_sets (FP32 [K+1, D]) + TOPK (INT32 [1]) -> SCORES, IDS,
PATHS, INDICES of the top-k gallery images, through kernels.search (the Triton GPU kernel when
the instance is on a GPU, the blocked CPU path otherwise).

The gallery file (export/gallery.py) next to this model.py is loaded once at start-up, checked
against the checkpoint fingerprint in the config's parameters, and searched once as warm-up.
Parameters: `fingerprint`, `index_offset` (the global index of this shard's first image:
INDICES are global, so a client merging shards breaks ties exactly as one search would).
All requests of a dynamic batch share one kernels.search call.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import kernels
from export.gallery import load_gallery
from serving.models.common import RequestError, error_response, input_array, parameters

GALLERY_FILE = "gallery.safetensors"


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        folder = Path(args["model_repository"]) / args["model_version"]
        gallery = load_gallery(folder / GALLERY_FILE, fingerprint=params.get("fingerprint") or None)
        on_gpu = args.get("model_instance_kind") == "GPU" and torch.cuda.is_available()
        self.device = torch.device(f"cuda:{args['model_instance_device_id']}" if on_gpu else "cpu")
        # the CPU path computes in fp32: convert the fp16 file once, not per query
        self.sets = gallery.sets.to(self.device, torch.float16 if on_gpu else torch.float32)
        self.margin = None if gallery.margin is None else gallery.margin.to(self.device)
        self.params = {"alpha": gallery.alpha, "weight": gallery.weight}
        self.ids = gallery.ids.numpy()
        self.paths = np.array([p.encode("utf-8") for p in gallery.paths], dtype=object)
        self.offset = int(params.get("index_offset", "0"))
        self.search(self.sets[:1].float(), 1)  # warm-up (Triton compiles its kernel here on a GPU)

    def search(self, queries: torch.Tensor, k: int):
        return kernels.search(queries.to(self.device), self.sets, k,
                              margin=self.margin, **self.params)

    def _topk(self, request) -> int:
        topk = input_array(request, "TOPK").reshape(-1)
        if (topk < 1).any():
            raise RequestError(f"TOPK must be at least 1, got {int(topk.min())}")
        if (topk != topk[0]).any():
            raise RequestError("TOPK must be the same for every text of one request")
        return int(topk[0])

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils
        ks, batches = [], []
        for request in requests:
            try:
                ks.append(self._topk(request))
            except RequestError as e:
                ks.append(e)
            batches.append(input_array(request, "text_sets"))
        good = [i for i, k in enumerate(ks) if isinstance(k, int)]
        if good:  # one search for every valid request, at the largest k, sliced back below
            queries = torch.from_numpy(np.concatenate([batches[i] for i in good]))
            scores, index = (t.cpu().numpy() for t in self.search(queries, max(ks[i] for i in good)))
        responses, start = [], 0
        for k, batch in zip(ks, batches):
            if not isinstance(k, int):
                responses.append(error_response(str(k)))
                continue
            rows = slice(start, start + batch.shape[0])
            start += batch.shape[0]
            s, i = scores[rows, :k], index[rows, :k]
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("SCORES", np.ascontiguousarray(s, dtype=np.float32)),
                pb_utils.Tensor("IDS", self.ids[i]),
                pb_utils.Tensor("PATHS", self.paths[i]),
                pb_utils.Tensor("INDICES", (i + self.offset).astype(np.int64))]))
        return responses
