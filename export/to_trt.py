"""TensorRT engines of a checkpoint's encoders, and the production Triton model repository.

    python export/to_trt.py CKPT [--fp16] [--max-batch 32] [--out DIR] [--timing-cache FILE]

1. ONNX: DIR holds export/to_onnx.py's export (written when missing, or when it is of another
   checkpoint or precision). DIR defaults to CKPT/trt (CKPT/trt-fp16 with --fp16).
2. Engines DIR/text_encoder.plan and DIR/image_encoder.plan, one optimization profile each:
   batch min 1, max --max-batch, opt min(8, max) for text (queries arrive a few at a time) and
   max for images (gallery building runs full batches).
3. Precision comes from the ONNX graph and the network is strongly typed: fp32, or with
   --fp16 the fp16 graph with fp32 LayerNorm / softmax / normalisation (export/fp16.py).
   TensorRT 10 is given the STRONGLY_TYPED creation flag; TensorRT 11 has no other mode (and
   no FP16 builder flag), so the same build serves both.
4. The timing cache (default DIR/timing.cache) is read before and written after each build:
   rebuilds on the same GPU and TensorRT skip kernel timing.
5. DIR/model_repository/{text_encoder,image_encoder}/: config.pbtxt (platform tensorrt_plan)
   and 1/model.plan; then each engine is checked against torch on a random batch.

Without TensorRT or a CUDA GPU, step 1 still runs; then it exits with status 2 and one line
saying what is missing and how to install it.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

import torch

from export.manifest import load_manifest
from export.model_repository import write_encoders
from export.to_onnx import export_onnx
from export.trt_runner import TrtRunner
from trainer.checkpoint import Checkpoint, load_checkpoint

TEXT_OPT_BATCH = 8
EXIT_MISSING = 2


class TrtUnavailable(RuntimeError):
    """This machine cannot build TensorRT engines (no tensorrt package, or no CUDA GPU)."""


def missing_requirements() -> str | None:
    """What this machine lacks to build engines (one line), or None."""
    missing = []
    try:
        importlib.import_module("tensorrt")
    except ImportError:
        missing.append("the `tensorrt` Python package (pip install 'tensorrt>=10', or pip install -e '.[trt]')")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU visible to torch (torch.cuda.is_available() is False: TensorRT needs an "
                       "NVIDIA GPU, its driver and a CUDA build of torch)")
    return " and ".join(missing) or None


def profile_shapes(manifest: dict, max_batch: int) -> dict[str, dict[str, tuple[tuple, tuple, tuple]]]:
    """Encoder name -> {input name: (min, opt, max) shapes} of its optimization profile."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    opt = {"text_encoder": min(TEXT_OPT_BATCH, max_batch), "image_encoder": max_batch}
    return {name: {i["name"]: tuple((b, *i["shape"][1:]) for b in (1, opt[name], max_batch))
                   for i in spec["inputs"]}
            for name, spec in manifest["models"].items()}


def network_flags(trt) -> int:
    """Strongly typed: the flag on TensorRT 10; TensorRT 11 networks are strongly typed anyway."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_engine(onnx_path: Path, plan_path: Path, shapes: dict[str, tuple], timing_cache: Path,
                 workspace_gib: float = 4.0) -> Path:
    """Parse an ONNX file into a strongly typed network and build a serialized engine with one
    optimization profile (`shapes`: input -> (min, opt, max)), through the persisted timing cache."""
    import tensorrt as trt
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"{onnx_path}: TensorRT could not build an engine (see the log above)")
    _write_atomic(plan_path, bytes(plan))
    _write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    return plan_path


def ensure_onnx(ckpt: Checkpoint, out_dir: Path, fp16: bool) -> dict:
    """The manifest of `out_dir`'s export of `ckpt` at the wanted precision, exported if needed."""
    try:
        manifest = load_manifest(out_dir, ckpt.fingerprint)
        if manifest["precision"] == ("fp16" if fp16 else "fp32"):
            return manifest
    except (FileNotFoundError, ValueError):
        pass
    # no progress bar off a terminal: a failing run's stderr is then its one-line reason
    return load_manifest(export_onnx(ckpt, out_dir, fp16=fp16, progress=sys.stderr.isatty()).parent)


@torch.no_grad()
def engine_parity(runner, model, spec: dict, batch: int = 2) -> float:
    """Lowest cosine, over set rows, between an engine's and the torch model's (fp32) output on a random batch."""
    (inp,), (out,) = spec["inputs"], spec["outputs"]
    shape = (batch, *inp["shape"][1:])
    if inp["dtype"] == "int32":  # random ids with an end token in the middle
        x = torch.randint(1, model.eot_id, shape, dtype=torch.int32)
        x[:, shape[1] // 2] = model.eot_id
    else:
        x = torch.randn(shape)
    x = x.cuda()
    want = model.cuda().encode_text(x) if inp["dtype"] == "int32" else model.cuda().encode_image(x)
    got = runner(**{inp["name"]: x})[out["name"]].float()
    return torch.nn.functional.cosine_similarity(got, want, dim=-1).min().item()


def build_trt(checkpoint: str | os.PathLike, out_dir: str | os.PathLike | None = None, fp16: bool = False,
              max_batch: int = 32, timing_cache: str | os.PathLike | None = None,
              workspace_gib: float = 4.0) -> Path:
    """Steps 1-5 of the module docstring; the model repository's path. Raises TrtUnavailable
    (after writing the ONNX) where TensorRT or CUDA is missing."""
    ckpt = load_checkpoint(checkpoint)
    out_dir = Path(out_dir) if out_dir else ckpt.path / ("trt-fp16" if fp16 else "trt")
    manifest = ensure_onnx(ckpt, out_dir, fp16)
    shapes = profile_shapes(manifest, max_batch)
    reason = missing_requirements()
    if reason:
        raise TrtUnavailable(f"ONNX encoders written to {out_dir}, but no TensorRT engine built: missing {reason}")
    cache = Path(timing_cache) if timing_cache else out_dir / "timing.cache"
    plans = {}
    for name, spec in manifest["models"].items():
        print(f"building {name} ({manifest['precision']}, batch 1..{max_batch}) ...", flush=True)
        plans[name] = build_engine(out_dir / spec["file"], out_dir / f"{name}.plan", shapes[name], cache, workspace_gib)
        cosine = engine_parity(TrtRunner(plans[name]), ckpt.model, spec)
        print(f"{name}: {plans[name]} (TensorRT vs torch fp32: lowest cosine {cosine:.6f})")
    repo = out_dir / "model_repository"
    write_encoders(repo, manifest, plans, "tensorrt_plan", max_batch)
    return repo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint directory (or training run: its best/)")
    parser.add_argument("--out", help="output directory (default: CKPT/trt or CKPT/trt-fp16)")
    parser.add_argument("--fp16", action="store_true", help="fp16 engines (fp32 LayerNorm, softmax, normalisation)")
    parser.add_argument("--max-batch", type=int, default=32, help="largest batch of the engines and of Triton")
    parser.add_argument("--timing-cache", help="TensorRT timing cache file (default: OUT/timing.cache)")
    parser.add_argument("--workspace-gib", type=float, default=4.0, help="builder workspace limit")
    a = parser.parse_args(argv)
    try:
        repo = build_trt(a.checkpoint, a.out, a.fp16, a.max_batch, a.timing_cache, a.workspace_gib)
    except TrtUnavailable as e:
        print(f"to_trt: {e}", file=sys.stderr)
        return EXIT_MISSING
    except RuntimeError as e:  # TensorRT refused the graph or the build
        print(f"to_trt: {e}", file=sys.stderr)
        return 1
    print(f"wrote the Triton model repository {repo}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
