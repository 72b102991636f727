"""TensorRT engines of a checkpoint's encoders, checked against torch, installed with their record.

    python export/to_trt.py CKPT [--fp16] [--max-batch 32] [--out DIR] [--timing-cache FILE]

1. ONNX: DIR holds export/to_onnx.py's export (written when missing, or when it is of another
   checkpoint or precision). DIR defaults to CKPT/trt (CKPT/trt-fp16 with --fp16), CKPT as
   given: for a training run, RUN/trt-fp16 beside its checkpoints.
2. Engines text_encoder.plan and image_encoder.plan, one optimization profile each: batch min 1,
   max --max-batch, opt min(8, max) for text (queries arrive a few at a time) and max for
   images (gallery building runs full batches). The text encoder's token axis is dynamic
   (export version 2): tokens min 1, opt min(32, context) (captions are ~20-30 tokens; the
   tokenizer pads a request to its longest caption, rounded up to a multiple of 16), max the
   context length.
3. Precision comes from the ONNX graph and the network is strongly typed: fp32, or with
   --fp16 the fp16 graph with fp32 LayerNorm / softmax / normalisation (export/fp16.py).
   TensorRT 10 is given the STRONGLY_TYPED creation flag; TensorRT 11 has no other mode (and
   no FP16 builder flag), so the same build serves both.
4. The timing cache (default DIR/timing.cache) is read before each build and written back
   after it: rebuilds on the same GPU and TensorRT skip kernel timing. TensorRT refuses a cache
   of another GPU or TensorRT version; the build then starts a fresh one.
5. Parity: each engine runs a random batch at both ends and the middle of its profile (every
   axis) against the torch model in fp32; a lowest cosine (over set rows) below
   PARITY[precision] fails the build.
6. Install: the engines are built and checked in a staging folder inside DIR, and only when
   both pass does DIR receive the plans, model_repository/{text_encoder,image_encoder}/
   (config.pbtxt, platform tensorrt_plan, and 1/model.plan) and, last, engines.json
   (export/engines.py), the record `tbps repo --engines DIR` checks. A build starts by
   withdrawing DIR's previous install, so a failed build leaves nothing that looks installed.

Every failure is one line on stderr: exit status 2 where a CUDA GPU or the container's exact
TensorRT is missing (export/engines.py CONTAINER_TRT: a plan loads only under the TensorRT that
built it; step 1 has run, the ONNX is there, DIR's previous install untouched), 1 for any other.
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from export.engines import CONTAINER, CONTAINER_TRT, RECORD, write_record
from export.manifest import VERSION, load_manifest
from export.model_repository import write_encoders
from export.to_onnx import export_onnx
from export.trt_runner import TrtRunner
from trainer.checkpoint import Checkpoint, load_checkpoint

TEXT_OPT_BATCH = 8
TEXT_OPT_TOKENS = 32  # a caption's length, padded to the tokenizer's buckets (multiples of 16)
PARITY = {"fp16": 0.999, "fp32": 0.9999}  # lowest cosine of an engine's set rows against torch fp32
EXIT_FAILED, EXIT_MISSING = 1, 2
REPOSITORY = "model_repository"


class TrtUnavailable(RuntimeError):
    """This machine cannot build TensorRT engines the container loads (no tensorrt package, another
    TensorRT version than the container's, or no CUDA GPU)."""


class BuildError(RuntimeError):
    """TensorRT refused a graph or a build, or an engine failed its parity check."""


def missing_requirements(device: str = "cuda") -> str | None:
    """What this machine lacks to build engines on `device` that the container loads (one line), or
    None. A CPU device is the tests' seam (tests/export/trt_stub); the CLI always builds on CUDA."""
    missing = []
    try:
        found = importlib.import_module("tensorrt").__version__
    except ImportError:
        missing.append(f"the `tensorrt` Python package (pip install -e '.[trt]': the TensorRT of the "
                       f"Triton {CONTAINER} container)")
    else:  # a plan loads only under the exact TensorRT that built it
        if found != CONTAINER_TRT:
            missing.append(f"the TensorRT {CONTAINER_TRT} of the Triton {CONTAINER} container (this machine has "
                           f"TensorRT {found}, whose engines that container cannot load: pip install -e '.[trt]')")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        missing.append("a CUDA GPU visible to torch (torch.cuda.is_available() is False: TensorRT needs an "
                       "NVIDIA GPU, its driver and a CUDA build of torch)")
    return " and ".join(missing) or None


def default_out_dir(checkpoint: str | os.PathLike, fp16: bool) -> Path:
    """CKPT/trt or CKPT/trt-fp16, CKPT as given (a run directory, not the best/ it resolves to)."""
    return Path(checkpoint) / ("trt-fp16" if fp16 else "trt")


def profile_batches(max_batch: int) -> dict[str, tuple[int, int, int]]:
    """Encoder name -> (min, opt, max) batch of its optimization profile."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    return {"text_encoder": (1, min(TEXT_OPT_BATCH, max_batch), max_batch), "image_encoder": (1, max_batch, max_batch)}


def profile_tokens(manifest: dict) -> tuple[int, int, int]:
    """(min, opt, max) tokens of the text encoder's profile: the context only for a version 1
    export (its token axis is fixed)."""
    context = manifest["tokenizer"]["context_length"]
    (ids,) = manifest["models"]["text_encoder"]["inputs"]
    if ids["shape"][1] != -1:
        return ids["shape"][1], ids["shape"][1], ids["shape"][1]
    return 1, min(TEXT_OPT_TOKENS, context), ids.get("max_shape", [-1, context])[1]


def profile_shapes(manifest: dict, max_batch: int) -> dict[str, dict[str, tuple[tuple, tuple, tuple]]]:
    """Encoder name -> {input name: (min, opt, max) shapes} of its optimization profile: the
    batch first, then the text encoder's tokens (profile_tokens); every other axis is fixed."""
    batches = profile_batches(max_batch)
    tokens = profile_tokens(manifest)
    shapes = {}
    for name, spec in manifest["models"].items():
        shapes[name] = {}
        for i in spec["inputs"]:
            rest = [[size] * 3 if size != -1 else tokens for size in i["shape"][1:]]
            shapes[name][i["name"]] = tuple((b, *(r[end] for r in rest)) for end, b in enumerate(batches[name]))
    return shapes


def network_flags(trt) -> int:
    """Strongly typed: STRONGLY_TYPED is bit 1 on TensorRT 10, bit 0 (deprecated, ignored: networks are
    always strongly typed) on TensorRT 11, so the bit comes from the bindings, never a literal."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _attach_timing_cache(config, path: Path) -> None:
    """The persisted cache, or a fresh one where TensorRT refuses it (another GPU or TensorRT version:
    its timings would not hold here)."""
    data = path.read_bytes() if path.is_file() else b""
    if config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False) or not data:
        return
    print(f"{path} is of another GPU or TensorRT version: starting a fresh one", flush=True)
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


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
        raise BuildError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    _attach_timing_cache(config, timing_cache)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError(f"{onnx_path}: TensorRT could not build an engine (build_serialized_network returned "
                         f"None; TensorRT's log above says why)")
    _write_atomic(plan_path, bytes(plan))
    merged = config.get_timing_cache()  # the attached cache, this build's timings added; None if none was taken
    if merged is not None:
        _write_atomic(timing_cache, bytes(merged.serialize()))
    return plan_path


def ensure_onnx(ckpt: Checkpoint, out_dir: Path, fp16: bool) -> dict:
    """The manifest of `out_dir`'s export of `ckpt` at the wanted precision, exported if needed."""
    try:  # an older export version (a fixed token axis) is exported again
        manifest = load_manifest(out_dir, ckpt.fingerprint)
        if manifest["precision"] == ("fp16" if fp16 else "fp32") and manifest["version"] == VERSION:
            return manifest
    except (FileNotFoundError, ValueError):
        pass
    # no progress bar off a terminal: a failing run's stderr is then its one-line reason
    return load_manifest(export_onnx(ckpt, out_dir, fp16=fp16, progress=sys.stderr.isatty()).parent)


@torch.no_grad()
def engine_parity(runner, model, spec: dict, shapes: tuple[tuple[int, ...], ...], device: str = "cuda") -> float:
    """Lowest cosine, over set rows, between an engine's and the torch model's (fp32) output on
    seeded random inputs of the given shapes; -1 where the engine's output is NaN."""
    (inp,), (out,) = spec["inputs"], spec["outputs"]
    generator = torch.Generator().manual_seed(0)
    model = model.to(device)
    lowest = 1.0
    for shape in shapes:
        if inp["dtype"] == "int32":  # random ids with an end token in the middle
            x = torch.randint(1, model.eot_id, shape, dtype=torch.int32, generator=generator)
            x[:, shape[1] // 2] = model.eot_id
        else:
            x = torch.randn(shape, generator=generator)
        x = x.to(device)
        want = model.encode_text(x) if inp["dtype"] == "int32" else model.encode_image(x)
        got = runner(**{inp["name"]: x})[out["name"]].float()
        cosine = torch.nn.functional.cosine_similarity(got, want, dim=-1)
        lowest = min(lowest, torch.nan_to_num(cosine, nan=-1.0).min().item())  # a NaN row is the worst row
    return lowest


def gpu_facts(device: str) -> dict:
    """The GPU the engines are built for: they run only on GPUs of its compute capability."""
    device = torch.device(device)
    if device.type != "cuda":
        return {"name": device.type, "compute_capability": None}
    major, minor = torch.cuda.get_device_capability(device)
    return {"name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}


def _withdraw(out_dir: Path, names) -> None:
    """Remove a previous install, record first: from then on nothing in DIR passes check_engines."""
    (out_dir / RECORD).unlink(missing_ok=True)
    for name in names:
        (out_dir / f"{name}.plan").unlink(missing_ok=True)
    shutil.rmtree(out_dir / REPOSITORY, ignore_errors=True)


def build_trt(checkpoint: str | os.PathLike, out_dir: str | os.PathLike | None = None, fp16: bool = False,
              max_batch: int = 32, timing_cache: str | os.PathLike | None = None,
              workspace_gib: float = 4.0, device: str = "cuda") -> Path:
    """Steps 1-6 of the module docstring; the engine folder (what `tbps repo --engines` takes).
    Raises TrtUnavailable (after writing the ONNX) where TensorRT or CUDA is missing, BuildError
    where TensorRT or a parity check fails (nothing installed)."""
    batches = profile_batches(max_batch)  # a bad --max-batch fails before the export
    ckpt = load_checkpoint(checkpoint)
    out_dir = Path(out_dir) if out_dir else default_out_dir(checkpoint, fp16)
    manifest = ensure_onnx(ckpt, out_dir, fp16)
    shapes = profile_shapes(manifest, max_batch)
    reason = missing_requirements(device)
    if reason:
        raise TrtUnavailable(f"ONNX encoders written to {out_dir}, but no TensorRT engine built: missing {reason}")
    import tensorrt as trt
    cache = Path(timing_cache) if timing_cache else out_dir / "timing.cache"
    precision, names = manifest["precision"], list(manifest["models"])
    _withdraw(out_dir, names)
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=out_dir) as tmp:
        stage = Path(tmp)
        parity = {}
        for name, spec in manifest["models"].items():
            low, opt, high = batches[name]
            extent = "".join(f", tokens {t[0]}..{t[2]}, opt {t[1]}" for t in [profile_tokens(manifest)]
                             if name == "text_encoder")
            print(f"building {name} ({precision}, batch {low}..{high}, opt {opt}{extent}) ...", flush=True)
            plan = build_engine(out_dir / spec["file"], stage / f"{name}.plan", shapes[name], cache, workspace_gib)
            (profile,) = shapes[name].values()
            parity[name] = engine_parity(TrtRunner(plan, device), ckpt.model, spec, profile, device)
            if parity[name] < PARITY[precision]:
                raise BuildError(f"{name}: TensorRT engine against torch fp32: lowest cosine {parity[name]:.6f}, "
                                 f"below {PARITY[precision]} ({precision}): nothing installed in {out_dir}")
            print(f"{name}: lowest cosine against torch fp32 {parity[name]:.6f} (>= {PARITY[precision]})", flush=True)
        plans = {name: stage / f"{name}.plan" for name in names}
        write_encoders(stage / REPOSITORY, manifest, plans, "tensorrt_plan", max_batch)
        for plan in plans.values():
            os.replace(plan, out_dir / plan.name)
        os.replace(stage / REPOSITORY, out_dir / REPOSITORY)
        write_record(out_dir, {
            "fingerprint": manifest["fingerprint"], "precision": precision, "tensorrt": trt.__version__,
            "gpu": gpu_facts(device),
            "models": {name: {"plan": f"{name}.plan", "min_batch": low, "opt_batch": opt, "max_batch": high,
                              "profile": {i: [list(s) for s in ends] for i, ends in shapes[name].items()}}
                       for name, (low, opt, high) in batches.items()},
            "parity": parity,
        })
    return out_dir


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint directory (or training run: its best/)")
    parser.add_argument("--out", help="output directory (default: CKPT/trt or CKPT/trt-fp16)")
    parser.add_argument("--fp16", action="store_true", help="fp16 engines (fp32 LayerNorm, softmax, normalisation)")
    parser.add_argument("--max-batch", type=int, default=32, help="largest batch of the engines and of Triton")
    parser.add_argument("--timing-cache", help="TensorRT timing cache file (default: OUT/timing.cache)")
    parser.add_argument("--workspace-gib", type=float, default=4.0, help="builder workspace limit")
    parser.set_defaults(device="cuda")


def run(a: argparse.Namespace) -> int:
    """The exit status: 0, EXIT_MISSING or EXIT_FAILED, each failure one line on stderr."""
    try:
        out = build_trt(a.checkpoint, a.out, a.fp16, a.max_batch, a.timing_cache, a.workspace_gib, a.device)
    except TrtUnavailable as e:
        print(f"to_trt: {_one_line(e)}", file=sys.stderr)
        return EXIT_MISSING
    except (RuntimeError, ValueError, OSError) as e:  # TensorRT, a parity check, the checkpoint or a file refused
        print(f"to_trt: {_one_line(e)}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {out}/text_encoder.plan, image_encoder.plan, {RECORD} and {REPOSITORY}/ "
          f"(for tbps repo ... --profile production --engines {out})")
    return 0


def main(argv: list[str] | None = None, device: str = "cuda") -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(device=device)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
