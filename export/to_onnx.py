"""ONNX encoders of a checkpoint, for ONNX Runtime, TensorRT and Triton.

    python export/to_onnx.py CKPT --out DIR [--fp16] [--opset 17]

writes DIR/text_encoder.onnx (`input_ids` int32 [B, T] -> `text_sets` float32 [B, K+1, D], any
T <= the context length: captions padded to the longest of a batch, not to 77),
DIR/image_encoder.onnx (`pixels` float32 [B, 3, H, W] -> `image_sets` float32 [B, K+1, D]),
a copy of the checkpoint's BPE merges (DIR/tokenizer.txt.gz) and DIR/manifest.json (see
export/manifest.py), last. The batch is dynamic, and so is the text encoder's token axis: the
end-of-text token is found by tensor ops, the positional embedding is sliced to T, attention is
causal and the heads mask what follows the end token, so a caption padded to any T gives the
sets it gives at the full context (tests/export/test_to_onnx.py checks it on ONNX Runtime).
Both graphs go through Retriever.encode_text /
encode_image, so every method exports the same way. Opset >= 17: LayerNorm is one
LayerNormalization op. `--fp16` writes fp16 graphs with fp32 islands (export/fp16.py), I/O
types unchanged.
"""
from __future__ import annotations

import argparse
import os
import shutil
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn
from tqdm import tqdm

from export.fp16 import convert_to_fp16
from export.manifest import FORMAT, VERSION, write_manifest
from trainer.checkpoint import Checkpoint, load_checkpoint
from trainer.cli import run_script

OPSET = 17
BATCH = "batch"  # the dynamic axis' name in the graphs
TOKENS = "tokens"  # the text encoder's dynamic token axis
EXAMPLE_TOKENS = 16  # the tracer's caption length: shorter than the context, so nothing is specialised to it
TOKENIZER_FILE = "tokenizer.txt.gz"


class _Encoder(nn.Module):
    """One tower of a Retriever as a module of one input, for the tracer."""

    def __init__(self, model: nn.Module, text: bool):
        super().__init__()
        self.model, self.text = model, text

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(x) if self.text else self.model.encode_image(x)


def encoder_specs(model: nn.Module, context_length: int) -> dict[str, dict]:
    """File and tensors (name, dtype, shape with -1 for a dynamic axis) of both encoders of a
    Retriever. The text input is [batch, tokens]; `max_shape` bounds its tokens by the context."""
    h, w = model.clip.config.vision.image_size
    sets = [-1, model.set_size, model.clip.config.embed_dim]
    return {
        "text_encoder": {"file": "text_encoder.onnx",
                         "inputs": [{"name": "input_ids", "dtype": "int32", "shape": [-1, -1],
                                     "max_shape": [-1, context_length]}],
                         "outputs": [{"name": "text_sets", "dtype": "float32", "shape": sets}]},
        "image_encoder": {"file": "image_encoder.onnx",
                          "inputs": [{"name": "pixels", "dtype": "float32", "shape": [-1, 3, h, w]}],
                          "outputs": [{"name": "image_sets", "dtype": "float32", "shape": sets}]},
    }


def _example(spec: dict, eot_id: int) -> torch.Tensor:
    """A batch of 2 for the tracer (not 1: a batch of one could be specialised into the graph), of
    EXAMPLE_TOKENS tokens where the token axis is dynamic (bounded by `max_shape`)."""
    tokens = min(EXAMPLE_TOKENS, spec.get("max_shape", [-1, EXAMPLE_TOKENS])[1])
    shape = [2, *(tokens if size == -1 else size for size in spec["shape"][1:])]
    if spec["dtype"] == "int32":
        ids = torch.ones(shape, dtype=torch.int32)
        ids[:, min(5, shape[1] - 1)] = eot_id  # the graph must not depend on where the end token is: tensor ops find it
        return ids
    return torch.randn(shape)


def export_encoder(model: nn.Module, name: str, spec: dict, path: Path, eot_id: int,
                   fp16: bool = False, opset: int = OPSET) -> Path:
    """Trace one encoder of a Retriever into `path` (atomically), checked by onnx.checker. Every -1
    of the input's shape is a dynamic axis (the batch first; the text encoder's tokens)."""
    (inp,), (out,) = spec["inputs"], spec["outputs"]
    axes = {i: BATCH if i == 0 else TOKENS for i, size in enumerate(inp["shape"]) if size == -1}
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, torch.jit.TracerWarning))
        torch.onnx.export(_Encoder(model, text=name == "text_encoder").eval(), (_example(inp, eot_id),),
                          str(tmp), dynamo=False, opset_version=opset, do_constant_folding=True,
                          input_names=[inp["name"]], output_names=[out["name"]],
                          dynamic_axes={inp["name"]: axes, out["name"]: {0: BATCH}})
    proto = onnx.load(str(tmp))
    # The output's set size and width are fixed by the model: say so, for TensorRT and Triton.
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    for dim, size in zip(dims, out["shape"]):
        if size == -1:
            dim.dim_param = BATCH
        else:
            dim.dim_value = size
    if fp16:
        proto = convert_to_fp16(proto)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return path


def export_onnx(ckpt_path: str | os.PathLike | Checkpoint, out_dir: str | os.PathLike, fp16: bool = False,
                opset: int = OPSET, progress: bool = False) -> Path:
    """Export a checkpoint's encoders, tokenizer and manifest into `out_dir`; the manifest's path.
    `ckpt_path` may be a loaded Checkpoint (its model must be on the CPU)."""
    if opset < 17:
        raise ValueError(f"opset must be >= 17 (LayerNormalization as one op), got {opset}")
    ckpt = ckpt_path if isinstance(ckpt_path, Checkpoint) else load_checkpoint(ckpt_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.json").unlink(missing_ok=True)  # an export in progress is not complete
    config = ckpt.config
    context = config["tokenizer"]["context_length"]
    specs = encoder_specs(ckpt.model, context)
    eot = config["tokenizer"]["eot_id"]
    with torch.no_grad():
        for name, spec in tqdm(specs.items(), desc="export ONNX", disable=not progress):
            export_encoder(ckpt.model, name, spec, out_dir / spec["file"], eot, fp16, opset)
    shutil.copyfile(ckpt.tokenizer.merges_path, out_dir / TOKENIZER_FILE)
    return write_manifest(out_dir, {
        "format": FORMAT, "version": VERSION,
        "fingerprint": ckpt.fingerprint, "checkpoint": str(ckpt.path.resolve()),
        "method": config["method"], "method_args": config["method_args"],
        "set_size": ckpt.model.set_size, "embed_dim": config["embed_dim"],
        "image": config["image"],
        "tokenizer": dict(config["tokenizer"], file=TOKENIZER_FILE),
        "precision": "fp16" if fp16 else "fp32", "opset": opset,
        "scoring": ckpt.model.score_params,
        "models": specs,
    })


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint directory (or training run: its best/)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--fp16", action="store_true", help="fp16 graphs with fp32 LayerNorm, softmax, normalisation")
    parser.add_argument("--opset", type=int, default=OPSET)


def run(a: argparse.Namespace) -> None:
    manifest = export_onnx(a.checkpoint, a.out, fp16=a.fp16, opset=a.opset, progress=True)
    print(f"wrote {manifest.parent}/text_encoder.onnx, image_encoder.onnx, {TOKENIZER_FILE}, {manifest.name}")


def main(argv: list[str] | None = None) -> None:
    run_script(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
