"""Triton model `gallery_search`: a query + TOPK (INT32 [1]) and an optional filter -> SCORES,
IDS, PATHS, INDICES, CAMERA_NAMES and TIMES (ISO 8601; "" unknown) of the top-k live gallery items, through kernels.search (the Triton GPU
kernel when the instance is on a GPU, the blocked CPU path otherwise).

The query is exactly one of: `text_sets` (the text encoder's, person_search; the gallery's
adaptive margin applies), `image_sets` (the image encoder's, image_search) or `LIKE` (a
gallery item's global index: its stored sets); the last two are image-to-image and take no
margin (it corrects text-to-image hubness). The filter: CAMERAS (names), SINCE and UNTIL (ISO
8601), one per request: the live gallery reads only the zones whose cameras and time range can
match, and masks inside them (serving/live_gallery.py).

The gallery is this version's file plus its live state (serving/models/live.py): additions
and erasures committed by gallery_ingest / gallery_erase are taken in before every execution,
so an item is searchable once its ingest returned and gone once its erasure returned. An
instance of kind KIND_GPU runs on its own `cuda:N` or refuses to start (no silent CPU
fallback), and compiles at start every kernel variant it can launch (kernels.prepare: each batch
size, every k, filtered or not, with or without a margin, at any gallery size), so READY means
nothing compiles on the hot path. Requests with the same kind of query and filter share one
search.

Secured (serving/access.py): a request needs a viewer key when the server has keys, and the
model named gallery_search writes each search (the query as given: TEXT, IMAGE's SHA-256 or
LIKE; filter, k, the indices answered) to the audit trail before answering. Two-stage (`tbps
repo --two-stage`): the segments' ANN indexes give each query's candidates, scored exactly.

A local shard (gallery_search_<i>, fronted by serving/models/gallery_merge.py) holds one slice
and is asked for QUERY_SETS alone by the merge's first step of a LIKE: the item's sets, no
search (the merge then queries every shard with them).
"""
from __future__ import annotations

import json

import numpy as np
import torch

import kernels
from export.gallery_meta import NO_CAMERA, filter_bounds, format_time
from export.triton_config import EXACT, GALLERY_MODEL, QUERY_SETS
from serving.models.common import (AccessRefused, Guard, RequestError, error_response, input_array, parameters,
                                   refusal, search_record, text, unrecorded)
from serving.models.live import open_live

MAX_TOPK = 2**31 - 1  # TOPK is INT32: the kernels are prepared for every k it can carry
QUERIES = ("text_sets", "image_sets", "LIKE")


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


def _same_rows(array: np.ndarray, name: str) -> np.ndarray:
    if (array != array[:1]).any():
        raise RequestError(f"{name} must be the same for every query of one request")
    return array[0]


class TritonPythonModel:
    def initialize(self, args):
        self.device = claim_device(args["model_instance_kind"], int(args["model_instance_device_id"]))
        # the CPU path computes in fp32: convert the fp16 file once, not per query
        dtype = torch.float32 if self.device.type == "cpu" else torch.float16
        params = parameters(args)  # two-stage: each query's `candidates` nearest items of every indexed segment
        self.candidates = int(params["candidates"]) if params.get("candidates") else None
        self.live, self.index = open_live(args, writer=False, sets=self.device, dtype=dtype,
                                          ann=params.get("ann_proxy") or None,
                                          nprobe=int(params["nprobe"]) if params.get("nprobe") else None)
        notes = self.live.ann_notes  # a missing or unreadable index: that segment is scanned, or refused
        if notes and params.get("ann_missing") == "refuse":
            self.live.close()
            raise RuntimeError(f"gallery_search: {len(notes)} segment(s) without a usable ANN index (tbps ann), "
                               f"refused as configured (tbps repo --ann-missing refuse): {notes[0]}")
        for note in notes:
            print(f"gallery_search: {note}", flush=True)
        base = self.live.base
        max_batch = json.loads(args["model_config"])["max_batch_size"]
        rows, dim = self.live.set_shape  # queries have the gallery's set shape (one encoder family)
        kernels.prepare(rows, rows, dim, torch.int8 if self.live.scaled else dtype, self.device, max_batch, MAX_TOPK,
                        alpha=base.alpha, weight=base.weight)
        self.guard = Guard()
        self.front = args["model_name"] == GALLERY_MODEL  # a local shard's searches are its merge's to audit
        self.audited = self.front and self.guard.audited
        if self.front:
            self.guard.record([{"event": "load", "who": "server", "model": args["model_name"],
                                "version": int(args["model_version"]), "items": len(self.live)}])

    def _topk(self, request, rows: int) -> int:
        topk = input_array(request, "TOPK").reshape(-1)
        if (topk < 1).any():
            raise RequestError(f"TOPK must be at least 1, got {int(topk.min())}")
        if topk.shape[0] != rows:
            raise RequestError(f"TOPK has {topk.shape[0]} rows for {rows} queries")
        return int(_same_rows(topk, "TOPK"))

    def _query(self, request) -> tuple[str, torch.Tensor]:
        import triton_python_backend_utils as pb_utils
        given = [name for name in QUERIES if pb_utils.get_input_tensor_by_name(request, name) is not None]
        if len(given) != 1:
            raise RequestError(f"a query is exactly one of {', '.join(QUERIES)}; got {given or 'none'}")
        (kind,) = given
        if kind != "LIKE":
            return kind, torch.from_numpy(input_array(request, kind))
        locals_ = []
        for index in input_array(request, "LIKE").reshape(-1).tolist():
            local = self.index.to_local(index)
            if local is None or local >= len(self.live):
                raise RequestError(f"LIKE {index}: no such item in this gallery")
            locals_.append(local)
        locals_ = torch.tensor(locals_, dtype=torch.int64)
        erased = locals_[~self.live.take("alive", locals_)]
        if erased.numel():
            raise RequestError(f"LIKE {int(self.index.to_global(erased[:1].numpy())[0])}: that item was erased")
        return kind, self.live.sets_of(locals_)

    def _filter(self, request, rows: int) -> tuple:
        """(cameras, since, until), None where absent: the request's filter, a key to group by."""
        import triton_python_backend_utils as pb_utils
        key = []
        for name in ("CAMERAS", "SINCE", "UNTIL"):
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                key.append(None)
                continue
            array = tensor.as_numpy()
            if array.shape[0] != rows:
                raise RequestError(f"{name} has {array.shape[0]} rows for {rows} queries")
            values = [v for v in (text(raw, name) for raw in _same_rows(array, name).reshape(-1)) if v]
            key.append(tuple(sorted(set(values))) if name == "CAMERAS" else (values[0] if values else None))
        try:
            filter_bounds(self.live.cameras, *key)
        except ValueError as e:  # an unknown camera, a bad time, since > until: the gallery's words
            raise RequestError(str(e)) from None
        return tuple(key)

    def _strings(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """BYTES [rows, k] PATHS, CAMERA_NAMES and TIMES of the hits: the paths read for the
        hits alone, and one format_time per distinct time."""
        live, flat = self.live, torch.from_numpy(index.reshape(-1))
        paths = np.array([p.encode("utf-8") for p in live.paths(flat.tolist())], dtype=object)
        names = np.array([b""] + [c.encode("utf-8") for c in live.cameras], dtype=object)  # [0]: NO_CAMERA
        cameras = names[live.take("camera", flat).numpy() - NO_CAMERA]
        times, where = np.unique(live.take("time", flat).numpy(), return_inverse=True)
        stamps = np.array([format_time(int(t)).encode("utf-8") for t in times], dtype=object)
        return tuple(a.reshape(index.shape) for a in (paths, cameras, stamps[where.reshape(-1)]))

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils
        self.live.refresh()  # what ingest and erase committed: searchable, or gone, from now on
        parsed, groups, refused = [], {}, []
        for n, request in enumerate(requests):
            try:
                who = self.guard.admit(request, "viewer", "search")
                kind, queries = self._query(request)
                rows = queries.shape[0]
                k, key = self._topk(request, rows), self._filter(request, rows)
            except RequestError as e:
                parsed.append(e)
                if self.audited and isinstance(e, AccessRefused):
                    refused.append(refusal(e, "search"))
                continue
            parsed.append((kind, queries, k, who))
            if QUERY_SETS in request.requested_output_names():
                continue  # the merge's LIKE lookup: the sets alone
            groups.setdefault((kind == "text_sets", key), []).append(n)
        results = [None] * len(requests)
        for (margin, key), members in groups.items():  # one search per kind of query and filter
            queries = torch.cat([parsed[n][1] for n in members])
            found = self.live.search(queries, max(parsed[n][2] for n in members), margin, *key,
                                     candidates=self.candidates)
            scores, index = (t.cpu().numpy() for t in found)
            start = 0
            for n in members:
                rows, k = parsed[n][1].shape[0], parsed[n][2]
                results[n] = scores[start:start + rows, :k], index[start:start + rows, :k], found.exact
                start += rows
        # every hit's columns in one lookup per execution (one SQLite read for the paths)
        hits = [r[1].reshape(-1) for r in results if r is not None]
        flat = np.concatenate(hits) if hits else np.zeros(0, dtype=np.int64)
        columns = (*self._strings(flat), self.live.take("ids", torch.from_numpy(flat)).numpy())
        responses, start, audit = [], 0, refused
        for request, item, result in zip(requests, parsed, results):
            if isinstance(item, RequestError):
                responses.append(error_response(str(item)))
                continue
            if result is None:
                responses.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor(QUERY_SETS, item[1].float().cpu().numpy())]))
                continue
            s, i, exact = result
            paths, cameras, times, ids = (c[start:start + i.size].reshape(i.shape) for c in columns)
            start += i.size
            if self.audited:
                audit.append(search_record(request, item[3], item[2], self.index.to_global(i)))
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("SCORES", np.ascontiguousarray(s, dtype=np.float32)),
                pb_utils.Tensor("IDS", ids),
                pb_utils.Tensor("PATHS", paths),
                pb_utils.Tensor("INDICES", self.index.to_global(i)),
                pb_utils.Tensor("CAMERA_NAMES", cameras),
                pb_utils.Tensor("TIMES", times),
                pb_utils.Tensor(EXACT["name"], np.full((len(s), 1), exact))]))
        try:
            self.guard.record(audit)  # on disk before any answer leaves
        except OSError as e:
            return unrecorded(e, requests)
        return responses
