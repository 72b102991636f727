"""Triton model repository layout: REPO/<model>/config.pbtxt and REPO/<model>/<version>/ files.

Configs are export/triton_config.py's. The production profile serves the encoders with
Triton's own backends: `tensorrt_plan` (export/to_trt.py) or `onnxruntime_onnx`
(export/to_onnx.py); tensor names and shapes come from the export manifest (export/manifest.py),
so the server's tensors are the ONNX graphs'.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from export.triton_config import encoder_config, write_config

MODEL_FILES = {"tensorrt_plan": "model.plan", "onnxruntime_onnx": "model.onnx"}


def write_model(repo: str | os.PathLike, name: str, files: dict[str, Path], config=None, version: int = 1) -> Path:
    """REPO/<name>/<version>/<target> copies of `files` (target -> source) and, given a
    ModelConfig, REPO/<name>/config.pbtxt (without: a new version under the config written)."""
    folder = Path(repo) / name
    for target, source in files.items():
        if not Path(source).is_file():
            raise FileNotFoundError(f"{target} of {folder.name} not found: {source}")
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    for target, source in files.items():
        shutil.copyfile(source, folder / str(version) / target)
    if config is not None:
        write_config(folder, config)
    return folder


def write_encoders(repo: str | os.PathLike, manifest: dict, model_files: dict[str, Path], platform: str,
                   max_batch_size: int | dict[str, int], **config) -> list[Path]:
    """Both encoders of an export (`model_files`: encoder name -> .plan or .onnx file);
    `max_batch_size` is one for both or one per encoder; `config` goes to encoder_config."""
    if platform not in MODEL_FILES:
        raise ValueError(f"unknown platform {platform!r}; available: {', '.join(MODEL_FILES)}")
    batch = max_batch_size if isinstance(max_batch_size, dict) else dict.fromkeys(model_files, max_batch_size)
    return [write_model(repo, name, {MODEL_FILES[platform]: model_files[name]},
                        encoder_config(name, platform, spec["inputs"], spec["outputs"], batch[name], **config))
            for name, spec in manifest["models"].items()]
