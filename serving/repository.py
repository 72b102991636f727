"""Write the Triton model repository that serves person search, and publish gallery versions.

    REPO/tokenizer        python: TEXT (BYTES) -> input_ids (INT32 [77])
    REPO/text_encoder     input_ids -> text_sets (FP32 [K+1, D])
    REPO/image_encoder    pixels (FP32 [3, H, W]) -> image_sets, for ingestion
    REPO/gallery_search   python: text_sets + TOPK -> SCORES, IDS, PATHS, INDICES (kernels.search)
    REPO/person_search    the ensemble: TEXT + TOPK -> SCORES, IDS, PATHS, INDICES

Profiles differ only in how the encoders run: `portable` runs ONNX Runtime inside the python
backend (the only backend of the tritonserver bundled with nvidia-pytriton, what CI and the
demo use); `production` uses Triton's `onnxruntime_onnx` backend, or `tensorrt_plan` with the
engines of export/to_trt.py. Tensor names and shapes are the export manifest's either way.
The python models' code is the installed package's (serving/models/): each model.py in the
repository is a one-line import, so the repository holds configuration and data only.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from export.gallery import load_gallery
from export.manifest import load_manifest
from export.model_repository import tensors_config, write_encoders

PROFILES = ("portable", "production")
GALLERY_MODEL, ENSEMBLE = "gallery_search", "person_search"
GALLERY_FILE = "gallery.safetensors"


def _python_config(name: str, module: str, inputs: list[dict], outputs: list[dict], max_batch_size: int,
                   parameters: dict[str, str] | None = None, instances: int = 1, kind: str = "KIND_CPU",
                   batching: bool = True) -> str:
    params = "".join(f'parameters {{\n  key: "{k}"\n  value: {{ string_value: "{v}" }}\n}}\n'
                     for k, v in (parameters or {}).items())
    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n'
            + tensors_config("input", inputs) + tensors_config("output", outputs)
            + ("dynamic_batching {\n  max_queue_delay_microseconds: 500\n}\n" if batching else "")
            + f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]\n" + params
            + f"# implementation: {module}\n")


def _write_python_model(repo: Path, name: str, module: str, config: str, files: dict[str, Path],
                        version: int = 1) -> Path:
    folder = repo / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(f"# Written by tbps (serving/repository.py): the code is the installed "
                                     f"package's.\nfrom {module} import TritonPythonModel  # noqa: F401\n")
    for target, source in files.items():
        shutil.copyfile(source, folder / target)
    if version == 1:
        (repo / name / "config.pbtxt").write_text(config)
    return repo / name


def _spec(name: str, dtype: str, shape: list) -> dict:
    return {"name": name, "dtype": dtype, "shape": shape}


def _ensemble_config(max_batch_size: int) -> str:
    def step(model, inputs, outputs):
        maps = "".join(f'      input_map {{ key: "{k}" value: "{v}" }}\n' for k, v in inputs.items())
        maps += "".join(f'      output_map {{ key: "{k}" value: "{v}" }}\n' for k, v in outputs.items())
        return f'    {{\n      model_name: "{model}"\n      model_version: -1\n{maps}    }}'
    results = {n: n for n in ("SCORES", "IDS", "PATHS", "INDICES")}
    steps = [step("tokenizer", {"TEXT": "TEXT"}, {"input_ids": "ids"}),
             step("text_encoder", {"input_ids": "ids"}, {"text_sets": "sets"}),
             step(GALLERY_MODEL, {"text_sets": "sets", "TOPK": "TOPK"}, results)]
    return (f'name: "{ENSEMBLE}"\nplatform: "ensemble"\nmax_batch_size: {max_batch_size}\n'
            + tensors_config("input", [_spec("TEXT", "string", [-1, 1]), _spec("TOPK", "int32", [-1, 1])])
            + tensors_config("output", [_spec("SCORES", "float32", [-1, -1]), _spec("IDS", "int64", [-1, -1]),
                                  _spec("PATHS", "string", [-1, -1]), _spec("INDICES", "int64", [-1, -1])])
            + "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n")


def gallery_config(manifest: dict, max_batch_size: int, index_offset: int = 0, kind: str = "KIND_CPU",
                   batching: bool = True) -> str:
    sets = manifest["models"]["text_encoder"]["outputs"][0]
    return _python_config(
        GALLERY_MODEL, "serving.models.gallery_search",
        [_spec("text_sets", "float32", sets["shape"]), _spec("TOPK", "int32", [-1, 1])],
        [_spec("SCORES", "float32", [-1, -1]), _spec("IDS", "int64", [-1, -1]),
         _spec("PATHS", "string", [-1, -1]), _spec("INDICES", "int64", [-1, -1])],
        max_batch_size, {"fingerprint": manifest["fingerprint"], "index_offset": str(index_offset)}, kind=kind,
        batching=batching)


def write_repository(source: str | os.PathLike, gallery: str | os.PathLike, out: str | os.PathLike,
                     profile: str = "portable", engines: str | os.PathLike | None = None,
                     max_batch_size: int = 64, index_offset: int = 0, kind: str = "KIND_CPU",
                     threads: int = 0, batching: bool = True) -> Path:
    """The repository for a checkpoint or an ONNX export directory (`source`) and a gallery
    file built by the same checkpoint. `engines`: a to_trt.py output folder (production).
    `batching=False` turns dynamic batching off in the python models (for comparison)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; available: {', '.join(PROFILES)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: choose a new folder for the repository")
    with tempfile.TemporaryDirectory(prefix="tbps-export-") as tmp:
        export_dir = Path(source)
        if not (export_dir / "manifest.json").is_file():  # a checkpoint: export its encoders first
            from export.to_onnx import export_onnx
            export_dir = export_onnx(source, tmp).parent
        manifest = load_manifest(export_dir)
        load_gallery(gallery, fingerprint=manifest["fingerprint"])  # refuse another model's gallery now
        out.mkdir(parents=True, exist_ok=True)
        files = {name: export_dir / spec["file"] for name, spec in manifest["models"].items()}
        if profile == "production":
            platform = "onnxruntime_onnx"
            if engines is not None:
                platform = "tensorrt_plan"
                files = {name: Path(engines) / f"{name}.plan" for name in files}
            write_encoders(out, manifest, files, platform, max_batch_size, kind="KIND_GPU")
        else:
            for name, spec in manifest["models"].items():
                config = _python_config(name, "serving.models.onnx_encoder", spec["inputs"], spec["outputs"],
                                        max_batch_size, {"threads": str(threads)}, batching=batching)
                _write_python_model(out, name, "serving.models.onnx_encoder", config, {"model.onnx": files[name]})
        tokenizer_config = _python_config("tokenizer", "serving.models.tokenizer", [_spec("TEXT", "string", [-1, 1])],
                                          [_spec("input_ids", "int32", [-1, manifest["tokenizer"]["context_length"]])],
                                          max_batch_size, batching=batching)
        _write_python_model(out, "tokenizer", "serving.models.tokenizer", tokenizer_config,
                            {"tokenizer.txt.gz": export_dir / manifest["tokenizer"]["file"]})
        gpu = "KIND_GPU" if profile == "production" else kind
        _write_python_model(out, GALLERY_MODEL, "serving.models.gallery_search",
                            gallery_config(manifest, max_batch_size, index_offset, gpu, batching),
                            {GALLERY_FILE: Path(gallery)})
        (out / ENSEMBLE / "1").mkdir(parents=True)
        (out / ENSEMBLE / "config.pbtxt").write_text(_ensemble_config(max_batch_size))
    return out


def gallery_versions(repo: str | os.PathLike) -> list[int]:
    folder = Path(repo) / GALLERY_MODEL
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def stage_gallery(repo: str | os.PathLike, gallery: str | os.PathLike, fingerprint: str) -> int:
    """Add a new version of gallery_search holding `gallery` (checked against the served
    checkpoint's fingerprint first); returns it. Load it with `publish_gallery`."""
    load_gallery(gallery, fingerprint=fingerprint)
    repo = Path(repo)
    version = gallery_versions(repo)[-1] + 1
    _write_python_model(repo, GALLERY_MODEL, "serving.models.gallery_search", "", {GALLERY_FILE: Path(gallery)},
                        version=version)
    return version


def publish_gallery(repo: str | os.PathLike, gallery: str | os.PathLike, url: str) -> int:
    """Put a new gallery live on a running server (started with explicit model control) without
    a restart: stage it as the next version and reload the model. Triton's version policy
    (latest 1) serves the new version once it is ready; requests already running finish on the
    old one, which is then unloaded. Versions before the previous one are deleted."""
    import tritonclient.grpc as grpcclient
    fingerprint = _served_fingerprint(Path(repo))
    version = stage_gallery(repo, gallery, fingerprint)
    grpcclient.InferenceServerClient(url).load_model(GALLERY_MODEL)
    for old in gallery_versions(repo)[:-2]:
        shutil.rmtree(Path(repo) / GALLERY_MODEL / str(old))
    return version


def _served_fingerprint(repo: Path) -> str:
    text = (repo / GALLERY_MODEL / "config.pbtxt").read_text()
    marker = 'key: "fingerprint"\n  value: { string_value: "'
    if marker not in text:
        raise ValueError(f"{repo / GALLERY_MODEL / 'config.pbtxt'} names no checkpoint fingerprint")
    return text.split(marker, 1)[1].split('"', 1)[0]

