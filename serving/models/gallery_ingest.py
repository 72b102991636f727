"""Triton model `gallery_ingest`: images (encoded bytes) with their path, person id, camera and
time -> INDEX (global, -1 where refused) and ERROR ("" where ingested), one row per image.

Each image is checked and decoded (serving/models/images.py), its path and time checked; the
good ones of every request of the batch are encoded by the repository's own image encoder (a
BLS call, so both profiles encode as they search) and appended in one durable LiveStore.add:
a response with an INDEX means the item is on disk, and gallery_search takes it in before its
next query. With local shards an execution's images go to the shard holding the fewest live
items, and a path live in any shard is refused. A refused image costs only its row; the others
of the same call are ingested. One instance, torch-free: the live gallery's one adding process.
"""
from __future__ import annotations

import json

import numpy as np

from export.gallery_meta import parse_time
from serving.models.common import (AccessRefused, Guard, RequestError, error_response, input_array, parameters,
                                   refusal, text)
from serving.models.images import ImageDecoder
from serving.models.live import open_stores

MAX_PATH_BYTES = 1024
FIELDS = ("IMAGE", "PATH", "PERSON", "CAMERA", "TIME")


class TritonPythonModel:
    def initialize(self, args):
        import triton_python_backend_utils as pb_utils
        self.pb = pb_utils
        self.stores = open_stores(args, adder=True)
        self.guard = Guard()
        params = parameters(args)
        self.decode = ImageDecoder(params["image"])
        self.encoder = json.loads(params["encoder"])  # the image encoder model, its tensors and batch limit

    def _row(self, r: int, image, path, person, camera, time, seen: set) -> tuple:
        """One image's fields, checked: (pixels, path, person, camera, time), or a RequestError."""
        name = text(path, f"image {r}: PATH")
        if not name or len(bytes(path)) > MAX_PATH_BYTES:
            raise RequestError(f"image {r}: PATH must be a non-empty name of at most {MAX_PATH_BYTES} bytes")
        if name in seen:
            raise RequestError(f"image {r}: {name!r} is already in the gallery (erase it first to replace it)")
        when = text(time, f"image {r} ({name}): TIME")
        if when:
            try:
                parse_time(when)
            except ValueError as e:
                raise RequestError(f"image {r} ({name}): {e}") from None
        pixels = self.decode(image, f"image {r} ({name})")
        seen.add(name)
        return pixels, name, int(person), text(camera, f"image {r} ({name}): CAMERA") or None, when or None

    def _encode(self, pixels: np.ndarray) -> np.ndarray:
        """The image encoder's sets of the pixels, in chunks it takes, returned in CPU memory."""
        pb, e = self.pb, self.encoder
        out = []
        for start in range(0, len(pixels), e["max_batch"]):
            response = pb.InferenceRequest(model_name=e["model"], requested_output_names=[e["output"]],
                                           inputs=[pb.Tensor(e["input"], pixels[start:start + e["max_batch"]])],
                                           preferred_memory=pb.PreferredMemory(pb.TRITONSERVER_MEMORY_CPU, 0)).exec()
            if response.has_error():
                raise RuntimeError(f"{e['model']}: {response.error().message()}")
            out.append(pb.get_output_tensor_by_name(response, e["output"]).as_numpy())
        return np.concatenate(out)

    def execute(self, requests):
        """A refused key answers its request alone; the others are ingested together."""
        who, refused = [], []
        for request in requests:
            try:
                who.append(self.guard.admit(request, "operator", "ingest"))
            except AccessRefused as e:
                who.append(error_response(str(e)))
                refused.append(refusal(e, "ingest"))
        admitted = [(r, w) for r, w in zip(requests, who) if isinstance(w, dict)]
        answers, records = self._ingest([r for r, _ in admitted], [w for _, w in admitted]) if admitted else ([], [])
        try:
            self.guard.record(refused + records)  # on disk before any answer leaves
        except OSError as e:  # the items are in (durably): say so, and that the trail missed them
            return [error_response(f"the audit trail could not be written ({e}); the ingest itself may have been "
                                   f"done: check with a search") for _ in requests]
        answers = iter(answers)
        return [next(answers) if isinstance(w, dict) else w for w in who]

    def _ingest(self, requests, who: list[dict]) -> tuple[list, list[dict]]:
        """(a response per request, the audit records of what was ingested)."""
        pb = self.pb
        fields = [[input_array(request, n).reshape(-1) for n in FIELDS] for request in requests]
        paths = [bytes(p).decode("utf-8", "replace").strip() for f in fields for p in f[1]]
        try:  # the live paths among them, in any shard: taken (erasures free theirs)
            seen = set().union(*(store.taken(paths) for store, _ in self.stores))
            target, numbering = min(self.stores, key=lambda s: s[0].live_items())  # the first of equals
        except Exception as e:
            return [error_response(f"ingest failed, nothing was added: {e}") for _ in requests], []
        good, errors = [], []  # (request, row, item) of every good row; every row's error ("" if good)
        for n, f in enumerate(fields):
            errors.append([])
            for r in range(len(f[0])):
                try:
                    good.append((n, r, self._row(r, *(column[r] for column in f), seen)))
                    errors[n].append("")
                except RequestError as e:
                    errors[n].append(str(e))
        index = [np.full((len(e), 1), -1, dtype=np.int64) for e in errors]
        if good:
            try:
                pixels, names, persons, cameras, times = zip(*(item for _, _, item in good))
                added = target.add(self._encode(np.stack(pixels)), list(names), persons, cameras, times)
            except Exception as e:  # nothing was acknowledged: every request of the batch is told
                return [error_response(f"ingest failed, nothing was added: {e}") for _ in requests], []
            for (n, r, _), i in zip(good, numbering.to_global(np.array(added))):
                index[n][r, 0] = i
        records = [{"event": "ingest", **w, "paths": [bytes(p).decode("utf-8", "replace") for p in f[1]],
                    "indices": rows.reshape(-1).tolist(), "refused": sum(bool(e) for e in errs)}
                   for w, f, rows, errs in zip(who, fields, index, errors)]
        return [pb.InferenceResponse([
            pb.Tensor("INDEX", rows),
            pb.Tensor("ERROR", np.array([e.encode("utf-8") for e in errs], dtype=object).reshape(-1, 1))])
            for rows, errs in zip(index, errors)], records
