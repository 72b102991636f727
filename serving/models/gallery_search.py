"""Triton model `gallery_search`: text_sets (FP32 [K+1, D]) + TOPK (INT32 [1]) -> SCORES, IDS,
PATHS, INDICES of the top-k gallery images, through kernels.search (the Triton GPU kernel when
the instance is on a GPU, the blocked CPU path otherwise).

The gallery file (export/gallery.py) next to this model.py is loaded once at start-up and
checked against the checkpoint fingerprint in the config's parameters. An instance of kind
KIND_GPU runs on its own `cuda:N` or refuses to start (no silent CPU fallback), and is warmed
up at every batch size and k bucket it can be asked for (warmup_shapes), so READY means its
kernels are compiled and tuned. Parameters: `fingerprint`, `index_offset` (the global index
of this shard's first image: INDICES are global, so a client merging shards breaks ties
exactly as one search would). All requests of a dynamic batch share one kernels.search call.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

import kernels
from export.gallery import load_gallery
from serving.models.common import RequestError, error_response, input_array, parameters

GALLERY_FILE = "gallery.safetensors"
WARMUP_MAX_K = 128  # k is rounded up to a power of two per compiled kernel; larger k take one dense path


def claim_device(kind: str, device_id: int) -> torch.device:
    """The instance's device: cpu for KIND_CPU; for KIND_GPU cuda:`device_id`, made the current
    device (Triton kernels launch on the current device, cuda:0 unless set), or an error."""
    if kind != "GPU":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"gallery_search: instance kind KIND_GPU but no usable CUDA device (torch "
                           f"{torch.__version__} built for CUDA {torch.version.cuda}): check that the container "
                           f"runs with --gpus and that the driver supports that CUDA, or use kind KIND_CPU")
    if device_id >= torch.cuda.device_count():
        raise RuntimeError(f"gallery_search: instance on GPU {device_id}, but torch sees "
                           f"{torch.cuda.device_count()} CUDA device(s)")
    torch.cuda.set_device(device_id)
    return torch.device("cuda", device_id)


def warmup_shapes(max_batch_size: int, max_k: int = WARMUP_MAX_K) -> list[tuple[int, int]]:
    """(batch, k) pairs covering every batch size up to max_batch_size (powers of two and the
    maximum) and every power-of-two k up to max_k."""
    def powers(limit):
        return sorted({1 << i for i in range(limit.bit_length()) if 1 << i <= limit} | {limit})
    return [(b, k) for b in powers(max_batch_size) for k in powers(max_k)]


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        self.device = claim_device(args["model_instance_kind"], int(args["model_instance_device_id"]))
        folder = Path(args["model_repository"]) / args["model_version"]
        gallery = load_gallery(folder / GALLERY_FILE, fingerprint=params.get("fingerprint") or None)
        # the CPU path computes in fp32: convert the fp16 file once, not per query
        self.sets = gallery.sets.to(self.device, torch.float32 if self.device.type == "cpu" else torch.float16)
        self.margin = None if gallery.margin is None else gallery.margin.to(self.device)
        self.params = {"alpha": gallery.alpha, "weight": gallery.weight}
        self.ids = gallery.ids.numpy()
        self.paths = np.array([p.encode("utf-8") for p in gallery.paths], dtype=object)
        self.offset = int(params.get("index_offset", "0"))
        max_batch = json.loads(args["model_config"])["max_batch_size"]
        for batch, k in warmup_shapes(max_batch):  # queries: gallery sets, the shape the encoder gives
            self.search(self.sets[torch.arange(batch) % len(self.sets)].float(), k)

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
