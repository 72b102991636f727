"""The exported encoders under ONNX Runtime: numpy in, embedding sets out."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.manifest import load_manifest


def token_axis(spec: dict) -> tuple[bool, int]:
    """(dynamic, length) of a text encoder's input: a dynamic axis takes any length up to
    `length` (the context); a fixed one (version 1 exports) exactly `length`."""
    (inp,) = spec["inputs"]
    if inp["shape"][1] == -1:
        return True, inp["max_shape"][1]
    return False, inp["shape"][1]


def trim_padding(ids: np.ndarray, eot_id: int) -> np.ndarray:
    """`ids` [B, L] without the columns after every row's first end-of-text token: the encoders
    read nothing past it (causal attention, masked heads), so the sets are the same, at the
    cost of the longest caption instead of the full context. Rows without one keep everything."""
    is_eot = ids == eot_id
    if ids.shape[0] == 0 or not is_eot.any(axis=1).all():
        return ids
    return ids[:, :int(is_eot.argmax(axis=1).max()) + 1]


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
        """Encoder `name` ("text_encoder" / "image_encoder") on a batch, checked against its
        manifest shape (a -1 takes any size, up to `max_shape` where the manifest gives one)."""
        spec = self.manifest["models"][name]
        (inp,), (out,) = spec["inputs"], spec["outputs"]
        x = np.ascontiguousarray(x, dtype=inp["dtype"])
        limit = inp.get("max_shape", inp["shape"])
        if x.ndim != len(inp["shape"]) or not all(
                s == want or (want == -1 and (top == -1 or 1 <= s <= top))
                for s, want, top in zip(x.shape[1:], inp["shape"][1:], limit[1:])):
            dims = [str(w) if w != -1 else ("T" if t == -1 else f"<={t}") for w, t in zip(inp["shape"][1:], limit[1:])]
            raise ValueError(f"{name}: input {inp['name']!r} must have shape [B, {', '.join(dims)}], "
                             f"got {list(x.shape)}")
        return self.sessions[name].run([out["name"]], {inp["name"]: x})[0]

    def encode_text(self, ids: np.ndarray) -> np.ndarray:
        """int32 token ids [B, T] -> float32 sets [B, K+1, D]. T is the context length (what the
        tokenizer gives by default), or up to it where the export's token axis is dynamic: full
        rows are then cut after their longest end token (the same sets, computed faster)."""
        dynamic, _ = token_axis(self.manifest["models"]["text_encoder"])
        if dynamic:
            ids = trim_padding(np.asarray(ids), self.manifest["tokenizer"]["eot_id"])
        return self.run("text_encoder", ids)

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised float32 pixels [B, 3, H, W] -> float32 sets [B, K+1, D]."""
        return self.run("image_encoder", pixels)
