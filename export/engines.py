"""The engine record: what a folder of TensorRT engines was built from, by what, for what.

`DIR/engines.json` is written last by export/to_trt.py, once every engine has passed its
parity check, so its presence marks a complete, checked build:

    {"format": "tbps-trt-engines", "version": 1,
     "fingerprint": the checkpoint's (the export manifest's "fingerprint"),
     "precision": "fp32" | "fp16", "tensorrt": "10.8.0.43",
     "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
     "models": {"text_encoder": {"plan": "text_encoder.plan", "min_batch": 1, "opt_batch": 8, "max_batch": 32},
                "image_encoder": {...}},
     "parity": {"text_encoder": lowest cosine against torch fp32, ...}}

A plan deserializes only under the exact TensorRT that built it, to the patch (engines of 10.13,
or of 10.8.0.40, do not load in 10.8.0.43), and on GPUs of its compute capability, so the record
names both, and the deployment target is named here once: the Triton container the Dockerfile
starts from, and its TensorRT (the version the `trt` extra of pyproject.toml pins).
"""
from __future__ import annotations

import os
from pathlib import Path

from export.manifest import ENCODERS
from trainer.records import read_json_record, write_json_record

RECORD = "engines.json"
CONTAINER = "25.01"      # nvcr.io/nvidia/tritonserver:25.01-py3: CUDA 12.8, TensorRT 10.8.0.43, Python 3.12
CONTAINER_TRT = "10.8.0.43"  # its TensorRT, exactly: the `trt` extra pins it (pyproject.toml)
_FORMAT, _VERSION = "tbps-trt-engines", 1
_KEYS = ("format", "version", "fingerprint", "precision", "tensorrt", "gpu", "models")
_MODEL_KEYS = ("plan", "min_batch", "opt_batch", "max_batch")


def write_record(folder: str | os.PathLike, record: dict) -> Path:
    """DIR/engines.json, atomically (a reader sees the old record or the new one, never half)."""
    return write_json_record(Path(folder) / RECORD, dict({"format": _FORMAT, "version": _VERSION}, **record))


def check_engines(folder: str | os.PathLike, fingerprint: str) -> dict:
    """The record of an engine folder whose engines the container's TensorRT can serve for the
    checkpoint `fingerprint`; ValueError (one line) otherwise."""
    folder = Path(folder)
    path = folder / RECORD
    keys = _KEYS + tuple(f"models.{n}.{k}" for n in ENCODERS for k in _MODEL_KEYS)
    record = read_json_record(path, _FORMAT, _VERSION, keys, ValueError, ValueError,
                              f"not a checked engine build (build one with: tbps trt CKPT --out {folder})")
    if record["fingerprint"] != fingerprint:
        raise ValueError(f"{path}: engines built from checkpoint {record['fingerprint']}, expected checkpoint "
                         f"{fingerprint} (rebuild them with export/to_trt.py)")
    if str(record["tensorrt"]) != CONTAINER_TRT:
        raise ValueError(f"{path}: engines built by TensorRT {record['tensorrt']} do not load in the Triton "
                         f"{CONTAINER} container, whose TensorRT is {CONTAINER_TRT} (a plan loads only under the "
                         f"exact TensorRT that built it: pip install -e '.[trt]' and rebuild)")
    for name in ENCODERS:
        plan = folder / record["models"][name]["plan"]
        if not plan.is_file() or plan.stat().st_size == 0:
            raise ValueError(f"{path}: {name} engine {plan} is {'empty' if plan.is_file() else 'missing'}")
    return record
