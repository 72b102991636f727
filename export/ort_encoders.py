"""The exported encoders under ONNX Runtime: numpy in, embedding sets out."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.manifest import load_manifest


class OnnxEncoders:
    """ONNX Runtime sessions of an export directory (see export/to_onnx.py). `fingerprint`, if
    given, must be the export's checkpoint; `threads` caps intra-op threads (None: all cores)."""

    def __init__(self, export_dir: str | os.PathLike, fingerprint: str | None = None,
                 threads: int | None = None, providers: list[str] | None = None):
        self.dir = Path(export_dir)
        self.manifest = load_manifest(self.dir, fingerprint)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.sessions = {name: ort.InferenceSession(str(self.dir / spec["file"]), options,
                                                    providers=providers or ["CPUExecutionProvider"])
                         for name, spec in self.manifest["models"].items()}

    def run(self, name: str, x: np.ndarray) -> np.ndarray:
        """Encoder `name` ("text_encoder" / "image_encoder") on a batch, checked against its manifest shape."""
        spec = self.manifest["models"][name]
        (inp,), (out,) = spec["inputs"], spec["outputs"]
        x = np.ascontiguousarray(x, dtype=inp["dtype"])
        if x.ndim != len(inp["shape"]) or list(x.shape[1:]) != inp["shape"][1:]:
            raise ValueError(f"{name}: input {inp['name']!r} must have shape [B, "
                             f"{', '.join(map(str, inp['shape'][1:]))}], got {list(x.shape)}")
        return self.sessions[name].run([out["name"]], {inp["name"]: x})[0]

    def encode_text(self, ids: np.ndarray) -> np.ndarray:
        """int32 token ids [B, context] -> float32 sets [B, K+1, D]."""
        return self.run("text_encoder", ids)

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised float32 pixels [B, 3, H, W] -> float32 sets [B, K+1, D]."""
        return self.run("image_encoder", pixels)
