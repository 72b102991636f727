"""Triton model `tokenizer`: TEXT (BYTES, UTF-8) -> input_ids (INT32 [T]), the project's tokenizer
(trainer/data/tokenizer.py) with the merges file of the checkpoint, next to this model.py.
Parameters (export/triton_config.py's token_padding): `pad` = "longest" pads each request's
captions to the longest of them, rounded up to a multiple of `multiple_of` (T <= 77, for a
text encoder with a dynamic token axis), "context" to the full 77 (version 1 exports).
The production profile serves this model; the portable text encoder (serving/models/onnx_encoder.py)
calls `token_ids` itself, so both tokenize and refuse bad text with this one code.

A request whose texts include an empty or whitespace-only caption, invalid UTF-8, or more
than MAX_TEXT_BYTES bytes gets one error naming the text's position and the problem; the
other requests of the batch are answered normally.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.models.common import RequestError, error_response, input_array, parameters
from trainer.data.tokenizer import Tokenizer

MAX_TEXT_BYTES = 4096  # a caption is a sentence or three; the model reads 77 tokens of it
TOKENIZER_FILE = "tokenizer.txt.gz"  # the merges, next to the model.py of whichever model tokenizes


def caption(raw, index: int) -> str:
    """The caption in a TEXT element, or a RequestError saying what is wrong with it."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if len(raw) > MAX_TEXT_BYTES:
        raise RequestError(f"text {index} is {len(raw)} bytes long; at most {MAX_TEXT_BYTES} are accepted")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(f"text {index} is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise RequestError(f"text {index} is empty: describe the person to search for")
    return text


def padding(params: dict[str, str]) -> dict:
    """The Tokenizer call's padding options from a model's parameters (`pad`, `multiple_of`)."""
    return {"longest": params.get("pad", "context") == "longest", "multiple_of": int(params.get("multiple_of", "1"))}


def token_ids(tokenizer: Tokenizer, texts: np.ndarray, pad: dict) -> np.ndarray:
    """int32 ids [B, T] of one request's TEXT [B, 1], or a RequestError naming its bad text."""
    ids = tokenizer([caption(t, i) for i, t in enumerate(texts.reshape(-1))], **pad)
    return ids.reshape(texts.shape[0], -1).astype(np.int32)


class TritonPythonModel:
    def initialize(self, args):
        self.tokenizer = Tokenizer(Path(args["model_repository"]) / args["model_version"] / TOKENIZER_FILE)
        self.pad = padding(parameters(args))

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils
        responses = []
        for request in requests:
            try:
                ids = token_ids(self.tokenizer, input_array(request, "TEXT"), self.pad)
            except RequestError as e:
                responses.append(error_response(str(e)))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("input_ids", ids)]))
        return responses
