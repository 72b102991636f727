"""What the python-backend models share: errors, batching of requests, config parameters, and
the gate and audit trail of the secured server (serving/access.py, serving/audit.py)."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from serving.access import AUDIT_ENV, AUDIT_SYNC_ENV, AccessDenied, Gate
from serving.audit import AuditLog, sync_ms_from


class RequestError(ValueError):
    """Bad input in one request: becomes that request's error response (code INVALID_ARG)."""


def error_response(message: str):
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(error=error)


def unrecorded(e: OSError, requests) -> list:
    """Every request's answer when the audit trail could not take their records: none leaves."""
    return [error_response(f"the audit trail could not be written ({e}): no answer") for _ in requests]


def parameters(args: dict) -> dict[str, str]:
    """The model config's `parameters { key: ... value: { string_value: ... } }` as a dict."""
    config = json.loads(args["model_config"])
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}  # "" is left out


def text(raw, what: str) -> str:
    """A BYTES element as stripped UTF-8 text; `what` names it in the error."""
    try:
        return bytes(raw).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise RequestError(f"{what} is not valid UTF-8") from None


def input_array(request, name: str) -> np.ndarray:
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


def pad_to_longest(arrays: list[np.ndarray], value=0) -> list[np.ndarray]:
    """Arrays [B_i, L_i] of one ragged batch, each padded with `value` to the longest L_i."""
    width = max(a.shape[1] for a in arrays)
    return [a if a.shape[1] == width else np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=value)
            for a in arrays]


def run_batched(requests, inputs: list[str], fn) -> list:
    """One call of fn over the rows of every request (what dynamic batching is for), split back
    into one response per request. fn(*arrays) -> list of (name, array) with rows aligned."""
    arrays = [[input_array(r, name) for name in inputs] for r in requests]
    sizes = [a[0].shape[0] for a in arrays]
    merged = [np.concatenate([a[i] for a in arrays]) for i in range(len(inputs))]
    outputs = fn(*merged)
    responses, start = [], 0
    for size in sizes:
        tensors = [pb_utils.Tensor(name, np.ascontiguousarray(value[start:start + size])) for name, value in outputs]
        responses.append(pb_utils.InferenceResponse(tensors))
        start += size
    return responses


def request_parameters(request) -> dict:
    """A request's parameters (the tbps-* headers Triton forwards among them), names lowercased:
    HTTP keeps a header's case, gRPC does not."""
    raw = request.parameters()
    return {str(k).lower(): v for k, v in (json.loads(raw) if raw else {}).items()}


ANONYMOUS = {"who": "anonymous", "user": "", "client": ""}


class AccessRefused(RequestError):
    """A request without the credential its operation needs (audited as a refusal)."""


def refusal(e: AccessRefused, what: str) -> dict:
    return {"event": "refused", "who": "unknown", "what": what, "reason": str(e)}


class Guard:
    """A model instance's check of who asks (a RequestError when they may not) and its audit
    trail (None where the server keeps none)."""

    def __init__(self):
        self.gate = Gate()
        folder = os.environ.get(AUDIT_ENV)
        self.log = AuditLog(folder, sync_ms=sync_ms_from(os.environ.get(AUDIT_SYNC_ENV))) if folder else None

    @property
    def audited(self) -> bool:
        return self.log is not None

    def admit(self, request, role: str, what: str) -> dict:
        if self.gate.keys is None and self.log is None:  # the open demo: no one to check, nothing to record
            return ANONYMOUS
        try:
            return self.gate.admit(request_parameters(request), role, what)
        except AccessDenied as e:
            raise AccessRefused(str(e)) from None

    def record(self, records: list[dict]) -> None:
        """Before the answers leave: on disk, or in the page cache in the weaker mode (AuditLog)."""
        if self.log is not None:
            self.log.write(records)


def search_record(request, who: dict, k: int, indices: np.ndarray) -> dict:
    """The audit record of one search request: the query as the user gave it (texts, images'
    SHA-256, gallery items; "sets": embedding sets sent directly), its filter and k, and the
    global indices answered, a list per query."""
    inputs = {t.name(): t for t in request.inputs()}  # one walk of them (get_input_tensor_by_name walks per name)

    def values(name):
        tensor = inputs.get(name)
        return None if tensor is None else tensor.as_numpy()
    if (texts := values("TEXT")) is not None:
        query = {"texts": [bytes(t).decode("utf-8", "replace") for t in texts.reshape(-1)]}
    elif (images := values("IMAGE")) is not None:
        query = {"images_sha256": [hashlib.sha256(bytes(i)).hexdigest() for i in images.reshape(-1)]}
    elif (like := values("LIKE")) is not None:
        query = {"like": like.reshape(-1).tolist()}
    else:
        query = {"sets": int(indices.shape[0])}
    found = {}
    for name in ("CAMERAS", "SINCE", "UNTIL"):
        if (array := values(name)) is not None:  # one filter per request: its first row
            found[name.lower()] = [bytes(v).decode("utf-8", "replace") for v in array[:1].reshape(-1)]
    return {"event": "search", **who, "query": query, "filter": found, "k": k, "indices": indices.tolist()}
