"""Triton model repository entries: config.pbtxt text and the REPO/<model>/<version>/ layout.

The production profile serves the encoders with Triton's own backends: `tensorrt_plan`
(export/to_trt.py) or `onnxruntime_onnx` (export/to_onnx.py). Tensor names and shapes come
from the export manifest (export/manifest.py), so the server's tensors are the ONNX graphs'.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

MODEL_FILES = {"tensorrt_plan": "model.plan", "onnxruntime_onnx": "model.onnx"}
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
                "string": "TYPE_STRING"}  # Triton's BYTES tensors: the serving models' text in, paths out


def tensors_config(section: str, specs: list[dict]) -> str:
    """An input/output block; the batch dimension (first, -1) is implied by max_batch_size."""
    entries = []
    for spec in specs:
        if spec["dtype"] not in TRITON_TYPES:
            raise ValueError(f"tensor {spec['name']!r}: no Triton type for dtype {spec['dtype']!r}")
        dims = ", ".join(str(d) for d in spec["shape"][1:])
        entries.append(f'  {{\n    name: "{spec["name"]}"\n    data_type: {TRITON_TYPES[spec["dtype"]]}\n'
                       f"    dims: [ {dims} ]\n  }}")
    return f"{section} [\n" + ",\n".join(entries) + "\n]\n"


def encoder_config(name: str, platform: str, inputs: list[dict], outputs: list[dict], max_batch_size: int,
                   instances: int = 1, kind: str = "KIND_GPU", max_queue_delay_us: int = 100,
                   preferred_batch_sizes: tuple[int, ...] = ()) -> str:
    """config.pbtxt of an encoder model. `inputs` / `outputs` are manifest tensor specs
    ({"name", "dtype", "shape"} with the batch first); requests are batched dynamically."""
    if platform not in MODEL_FILES:
        raise ValueError(f"unknown platform {platform!r}; available: {', '.join(MODEL_FILES)}")
    if max_batch_size < 1 or instances < 1:
        raise ValueError(f"max_batch_size and instances must be >= 1, got {max_batch_size} and {instances}")
    if kind not in ("KIND_GPU", "KIND_CPU"):
        raise ValueError(f"instance kind must be KIND_GPU or KIND_CPU, got {kind!r}")
    preferred = "".join(f"  preferred_batch_size: {b}\n" for b in preferred_batch_sizes)
    return (f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch_size}\n'
            + tensors_config("input", inputs) + tensors_config("output", outputs)
            + f"dynamic_batching {{\n{preferred}  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n"
            + f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]\n")


def write_encoder(repo: str | os.PathLike, name: str, platform: str, model_file: str | os.PathLike,
                  inputs: list[dict], outputs: list[dict], max_batch_size: int, version: int = 1,
                  **config) -> Path:
    """REPO/<name>/config.pbtxt and REPO/<name>/<version>/model.plan|model.onnx (a copy of
    `model_file`); `config` goes to encoder_config. Returns the model's folder."""
    model_file = Path(model_file)
    if not model_file.is_file():
        raise FileNotFoundError(f"model file for {name} not found: {model_file}")
    text = encoder_config(name, platform, inputs, outputs, max_batch_size, **config)
    folder = Path(repo) / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, folder / str(version) / MODEL_FILES[platform])
    (folder / "config.pbtxt").write_text(text)
    return folder


def write_encoders(repo: str | os.PathLike, manifest: dict, model_files: dict[str, Path], platform: str,
                   max_batch_size: int, **config) -> list[Path]:
    """Both encoders of an export (`model_files`: encoder name -> .plan or .onnx file)."""
    return [write_encoder(repo, name, platform, model_files[name], spec["inputs"], spec["outputs"],
                          max_batch_size, **config)
            for name, spec in manifest["models"].items()]
