"""What the python-backend models share: errors, batching of requests, config parameters."""
from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class RequestError(ValueError):
    """Bad input in one request: becomes that request's error response (code INVALID_ARG)."""


def error_response(message: str):
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(error=error)


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
