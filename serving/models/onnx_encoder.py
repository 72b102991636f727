"""Triton models `text_encoder` / `image_encoder` of the portable profile: ONNX Runtime inside
the python backend (the bundled server has no onnxruntime backend). Same tensor names as the
production profile's `onnxruntime_onnx` / `tensorrt_plan` models; all requests of a dynamic
batch go through one session run. Parameters: `threads` (intra-op threads, 0 = ORT's choice).
A text encoder whose token axis is dynamic (dims [-1]) and ragged (`allow_ragged_batch`) gets
requests padded to different lengths in one batch: they are 0-padded to the longest (the
encoder reads nothing past a caption's end token, so its sets do not change).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.models.common import parameters, run_batched


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        (self.input,), (self.output,) = config["input"], config["output"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters(args).get("threads", "0"))
        # idle ORT threads spin by default: they would starve the other models and servers
        # (the tokenizer, gallery search, other shards) sharing the same cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        dtype = {"TYPE_INT32": np.int32, "TYPE_FP32": np.float32}[self.input["data_type"]]
        self.ragged = (self.input["name"],) if self.input.get("allow_ragged_batch") else ()
        warmup = [int(d) if int(d) != -1 else 2 for d in self.input["dims"]]  # a dynamic token axis: 2 tokens
        self.session.run(None, {self.input["name"]: np.zeros([1, *warmup], dtype)})

    def execute(self, requests):
        def encode(x):
            return [(self.output["name"], self.session.run([self.output["name"]], {self.input["name"]: x})[0])]
        return run_batched(requests, [self.input["name"]], encode, self.ragged)
