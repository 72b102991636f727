"""The export manifest: what a consumer of the exported encoders needs besides the ONNX files.

`DIR/manifest.json` is written last by export.to_onnx, so its presence marks a complete
export. It names the checkpoint (fingerprint, method), the embedding sets (set_size,
embed_dim), the preprocessing (image size, mean/std; tokenizer file and context length),
each encoder's file and tensors, and the scoring parameters a gallery search needs.

Version 2: the text encoder's `input_ids` is [batch, tokens] (shape [-1, -1], `max_shape` [-1,
context]): any length up to the context. Version 1 exports (shape [-1, context]) are still read:
their consumers pad to the full context. A reader of version 1 refuses a version 2 export by
its version, not by a shape mismatch at the first query.
"""
from __future__ import annotations

import os
from pathlib import Path

from trainer.records import read_json_record, write_json_record

FORMAT = "tbps-onnx-export"
VERSION = 2
NAME = "manifest.json"
ENCODERS = ("text_encoder", "image_encoder")
REQUIRED_KEYS = ("format", "version", "fingerprint", "method", "set_size", "embed_dim", "image",
                 "tokenizer", "precision", "opset", "scoring", "models")


class ManifestError(ValueError):
    """An export directory that cannot be used: the message names the file and what is wrong."""


def write_manifest(out_dir: Path, manifest: dict) -> Path:
    return write_json_record(Path(out_dir) / NAME, manifest)


def load_manifest(export_dir: str | os.PathLike, fingerprint: str | None = None) -> dict:
    """The validated manifest of an export directory; with `fingerprint`, it must be that checkpoint's."""
    export_dir = Path(export_dir)
    path = export_dir / NAME
    manifest = read_json_record(path, FORMAT, VERSION, REQUIRED_KEYS, ManifestError, FileNotFoundError,
                                f"not an ONNX export (write one with: tbps export CKPT --out {export_dir})")
    for name in ENCODERS:
        file = export_dir / manifest["models"][name]["file"]
        if not file.is_file():
            raise ManifestError(f"{path}: {name} file {file} does not exist")
    if fingerprint is not None and manifest["fingerprint"] != fingerprint:
        raise ManifestError(f"{path}: exported from checkpoint {manifest['fingerprint']}, "
                            f"expected checkpoint {fingerprint}")
    return manifest
