"""Triton model `gallery_erase`: PATHS and/or PERSONS (optional, any number) -> ERASED (the
global indices of the items hidden by this call) and LIVE (the items left), over the served
gallery or every local shard of it.

The erasure is durable when the response comes (serving/live_store.py's `erase`), and
gallery_search takes it in before its next execution: the items are gone from every later
query. A path or person id that matches nothing is not an error: it erases nothing (ERASED
says what did go). A request with neither input erases nothing and reports LIVE. Torch-free.
"""
from __future__ import annotations

import numpy as np

from serving.live_store import GalleryReplaced
from serving.models.common import AccessRefused, Guard, RequestError, error_response, refusal
from serving.models.live import open_stores


class TritonPythonModel:
    def initialize(self, args):
        self.stores = open_stores(args, adder=False)
        self.guard = Guard()

    def _erase(self, request) -> tuple[list[int], dict | None]:
        """(the global indices erased, the audit record; None for a request that only counts)."""
        import triton_python_backend_utils as pb_utils
        paths, persons = (pb_utils.get_input_tensor_by_name(request, n) for n in ("PATHS", "PERSONS"))
        try:
            paths = [] if paths is None else [bytes(p).decode("utf-8") for p in paths.as_numpy().reshape(-1)]
        except UnicodeDecodeError:
            raise RequestError("PATHS must be UTF-8") from None
        persons = [] if persons is None else persons.as_numpy().reshape(-1).tolist()
        if not paths and not persons:  # LIVE alone: a count, which a viewer may ask
            self.guard.admit(request, "viewer", "counting the live items")
            return [], None
        who = self.guard.admit(request, "operator", "erasure")
        # shard by shard: an acknowledged erasure is on disk in every shard it touched
        erased = np.concatenate([index.to_global(np.array(store.erase(paths, persons), dtype=np.int64))
                                 for store, index in self.stores]).tolist()
        return erased, {"event": "erase", **who, "paths": paths, "persons": persons, "erased": sorted(erased)}

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils
        responses, records = [], []
        for request in requests:
            try:
                erased, record = self._erase(request)
            except AccessRefused as e:
                responses.append(error_response(str(e)))
                records.append(refusal(e, "erasure"))
                continue
            except (RequestError, GalleryReplaced) as e:
                responses.append(error_response(str(e)))
                continue
            records += [record] if record else []
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("ERASED", np.array(sorted(erased), dtype=np.int64)),
                pb_utils.Tensor("LIVE", np.array([sum(s.live_items() for s, _ in self.stores)], dtype=np.int64))]))
        try:
            self.guard.record(records)  # on disk before any answer leaves
        except OSError as e:
            return [error_response(f"the audit trail could not be written ({e}); the erasure itself may have been "
                                   f"done: check with a search") for _ in requests]
        return responses
