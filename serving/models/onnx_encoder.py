"""Triton models `text_encoder` / `image_encoder` of the portable profile: ONNX Runtime inside
the python backend (the bundled server has no onnxruntime backend). Same output names as the
production profile's `onnxruntime_onnx` / `tensorrt_plan` models; all requests of a dynamic
batch go through one session run. Parameters: `threads` (intra-op threads, 0 = ORT's choice).
The portable text encoder takes TEXT (BYTES) and tokenizes it itself (serving/models/tokenizer.py's
code and parameters, the merges file next to this model.py): one python-backend hop less per
query than a tokenizer model before it. Each request is padded to its longest caption, then
every request of the batch 0-padded to the batch's longest (the encoder reads nothing past a
caption's end token, so its sets do not change); a bad text fails its own request only.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from serving.models.common import RequestError, error_response, input_array, pad_to_longest, parameters, run_batched
from serving.models.tokenizer import TOKENIZER_FILE, padding, token_ids
from trainer.data.tokenizer import Tokenizer


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        (self.input,), (self.output,) = config["input"], config["output"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters(args).get("threads", "0"))
        # idle ORT threads spin by default: they would starve the other models and servers
        # (gallery search, other shards) sharing the same cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        folder = Path(args["model_repository"]) / args["model_version"]
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.graph_input = self.session.get_inputs()[0].name  # input_ids where the model takes TEXT
        self.tokenizer = None
        if self.input["data_type"] == "TYPE_STRING":
            self.tokenizer, self.pad = Tokenizer(folder / TOKENIZER_FILE), padding(parameters(args))
            warmup = token_ids(self.tokenizer, np.array([[b"a person"]], dtype=object), self.pad)
        else:
            dtype = {"TYPE_INT32": np.int32, "TYPE_FP32": np.float32}[self.input["data_type"]]
            warmup = np.zeros([1, *(int(d) for d in self.input["dims"])], dtype)
        self.session.run(None, {self.graph_input: warmup})

    def encode(self, x: np.ndarray) -> list:
        return [(self.output["name"], self.session.run([self.output["name"]], {self.graph_input: x})[0])]

    def execute(self, requests):
        if self.tokenizer is None:
            return run_batched(requests, [self.input["name"]], self.encode)
        ids = []
        for request in requests:
            try:
                ids.append(token_ids(self.tokenizer, input_array(request, "TEXT"), self.pad))
            except RequestError as e:
                ids.append(e)
        good = [x for x in ids if not isinstance(x, RequestError)]
        sets = []
        if good:
            ((_, out),) = self.encode(np.concatenate(pad_to_longest(good)))
            sets = np.split(out, np.cumsum([len(x) for x in good])[:-1])
        rows = iter(sets)
        return [error_response(str(x)) if isinstance(x, RequestError) else
                pb_utils.InferenceResponse([pb_utils.Tensor(self.output["name"], np.ascontiguousarray(next(rows)))])
                for x in ids]
