"""Write the Triton model repository that serves person search, and publish gallery versions.

    REPO/tokenizer        production, python: TEXT (BYTES) -> input_ids (INT32 [T], T <= 77: padded to the longest)
    REPO/text_encoder     input_ids -> text_sets (FP32 [K+1, D]); portable: TEXT -> text_sets, tokenizing itself
    REPO/image_encoder    pixels (FP32 [3, H, W]) -> image_sets
    REPO/image_decoder    python: IMAGE (BYTES, an encoded file) -> pixels
    REPO/gallery_search   python: text_sets | image_sets | LIKE, TOPK, filter -> SCORES, IDS, PATHS,
                          INDICES (kernels.search over the live gallery: the gallery directory + live/)
    REPO/gallery_ingest   python: IMAGE, PATH, PERSON, CAMERA, TIME -> INDEX, ERROR (durable additions)
    REPO/gallery_erase    python: PATHS, PERSONS -> ERASED, LIVE (durable erasures)
    REPO/person_search    the ensemble: TEXT + TOPK (+ CAMERAS, SINCE, UNTIL) -> SCORES, IDS, PATHS, INDICES
    REPO/image_search     the ensemble: IMAGE + TOPK (+ CAMERAS, SINCE, UNTIL) -> the same

Profiles differ only in how the encoders run: `portable` runs ONNX Runtime inside the python
backend (the only backend of the tritonserver bundled with nvidia-pytriton, what CI and the
demo use), and its text encoder tokenizes too (every python model a query crosses costs
shared-memory round trips to a stub process, so it crosses two); `production` uses Triton's
`onnxruntime_onnx` backend, or `tensorrt_plan` with the engines of export/to_trt.py, after
the python tokenizer. Tensor names and shapes are the export manifest's either way;
every config.pbtxt is export/triton_config.py's. The python models' code is the installed package's (serving/models/): each model.py in the
repository is a one-line import, so the repository holds configuration and data only.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from export.gallery import gallery_bytes, load_gallery
from export.gallery_writer import install_gallery
from export.manifest import load_manifest
from export.model_repository import write_encoders, write_model
from export.triton_config import (ENSEMBLE, ERASE_MODEL, GALLERY_MODEL, IMAGE_ENCODER, IMAGE_ENSEMBLE, INGEST_MODEL,
                                  TEXT_ENCODER, TOKEN_BUCKET, ensemble_config, erase_config,
                                  gallery_config, image_decoder_config, image_ensemble_config, ingest_config,
                                  parameter, python_config, read_config, text_encoder_config, tokenizer_config,
                                  write_config)
from serving.live_gallery import LiveGallery, start_live
from serving.live_store import GALLERY_FILE, LIVE_FOLDER, LiveStore

PROFILES = ("portable", "production")
DEFAULT_MAX_BATCH = 64


def _write_python_model(repo: Path, module: str, files: dict[str, Path], config=None, name: str | None = None,
                        version: int = 1) -> Path:
    """A python model whose code is the installed package's `module`: model.py is one import."""
    folder = write_model(repo, name or config.name, files, config, version)
    (folder / str(version) / "model.py").write_text(
        f"# Written by tbps (serving/repository.py): the code is the installed package's.\n"
        f"from {module} import TritonPythonModel  # noqa: F401\n")
    return folder


def _write_gallery_version(repo: Path, gallery: Path, config=None, version: int = 1) -> Path:
    """gallery_search version `version`: the gallery (as a version-3 directory: a version 1 or 2
    file is converted), and its live state started empty."""
    folder = _write_python_model(repo, "serving.models.gallery_search", {}, config, GALLERY_MODEL, version)
    served = install_gallery(load_gallery(gallery), folder / str(version) / GALLERY_FILE)
    start_live(folder / str(version) / LIVE_FOLDER, load_gallery(served, with_sets=False)).close()
    return folder


def _engine_batches(engines: Path, manifest: dict, max_batch_size: int | None) -> tuple[dict, dict[str, int]]:
    """(encoder -> plan file, encoder -> max_batch_size) from the engines' record, checked
    against the checkpoint and the container's TensorRT before anything is written."""
    from export.engines import check_engines
    record = check_engines(engines, manifest["fingerprint"])
    models = {name: record["models"][name] for name in manifest["models"]}
    for name, m in models.items():
        if m["min_batch"] != 1:
            raise ValueError(f"{engines}: the {name} engine's profile starts at batch {m['min_batch']}; "
                             f"Triton sends batches from 1: rebuild it with export/to_trt.py")
    (ids,) = manifest["models"][TEXT_ENCODER]["inputs"]
    if ids["shape"][1] == -1:  # the tokenizer sends any length up to the context: the profile must take it
        context = manifest["tokenizer"]["context_length"]
        profile = models[TEXT_ENCODER].get("profile", {}).get(ids["name"])
        if profile is None or profile[0][1] > min(TOKEN_BUCKET, context) or profile[2][1] < context:
            tokens = "a fixed token count" if profile is None else f"tokens {profile[0][1]}..{profile[2][1]}"
            raise ValueError(f"{engines}: the text_encoder engine's profile ({tokens}) does not take captions of "
                             f"{min(TOKEN_BUCKET, context)} to {context} tokens, which this export's tokenizer "
                             f"sends: rebuild the engines with export/to_trt.py")
    text_max = models[TEXT_ENCODER]["max_batch"]
    if max_batch_size is not None and max_batch_size > text_max:
        raise ValueError(f"--max-batch {max_batch_size} exceeds the engines' max batch {text_max} ({engines}): "
                         f"omit --max-batch, or rebuild the engines with export/to_trt.py --max-batch {max_batch_size}")
    return ({name: engines / m["plan"] for name, m in models.items()},
            {name: m["max_batch"] for name, m in models.items()})


def write_repository(source: str | os.PathLike, gallery: str | os.PathLike, out: str | os.PathLike,
                     profile: str = "portable", engines: str | os.PathLike | None = None,
                     max_batch_size: int | None = None, index_offset: int = 0, added_offset: int | None = None,
                     kind: str = "KIND_CPU", threads: int = 1, batching: bool = True,
                     token_bucket: int | None = None) -> Path:
    """The repository for a checkpoint or an ONNX export directory (`source`) and a gallery
    file built by the same checkpoint. `engines`: a to_trt.py output folder (production); the
    encoders' max_batch_size is then the engines', and `max_batch_size` (default: theirs, else
    DEFAULT_MAX_BATCH) may only lower the other models'. `threads`: ONNX Runtime's intra-op
    threads per portable encoder (1: on a few cores shared with the other models a thread pool
    costs more in wake-ups than it saves on this model's small ops). `batching=False` turns dynamic batching off in the python
    models (for comparison). `token_bucket`: the tokenizer pads each request to its longest
    caption rounded up to a multiple of this (default: 1 for portable, whose text encoder
    tokenizes and pads a batch itself; TOKEN_BUCKET for production, whose backends batch equal
    shapes only). An export of version 1 (a fixed token axis) is padded to the full context.
    `index_offset`, `added_offset`: the global indices of this gallery's items and additions
    (shards; serving/models/live.py)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; available: {', '.join(PROFILES)}")
    if engines is not None and profile != "production":
        raise ValueError("engines are served by the production profile: add --profile production")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: choose a new folder for the repository")
    with tempfile.TemporaryDirectory(prefix="tbps-export-") as tmp:
        export_dir = Path(source)
        if not (export_dir / "manifest.json").is_file():  # a checkpoint: export its encoders first
            from export.to_onnx import export_onnx
            export_dir = export_onnx(source, tmp).parent
        manifest = load_manifest(export_dir)
        load_gallery(gallery, fingerprint=manifest["fingerprint"], with_sets=False)  # refuse another model's now
        files = {name: export_dir / spec["file"] for name, spec in manifest["models"].items()}
        encoder_batch = dict.fromkeys(files, max_batch_size or DEFAULT_MAX_BATCH)
        if engines is not None:  # every check before the first file is written
            files, encoder_batch = _engine_batches(Path(engines), manifest, max_batch_size)
        batch = min(max_batch_size or encoder_batch[TEXT_ENCODER], encoder_batch[TEXT_ENCODER])
        delay = {} if batching else {"max_queue_delay_us": None}
        if token_bucket is None:
            token_bucket = TOKEN_BUCKET if profile == "production" else 1
        out.mkdir(parents=True, exist_ok=True)
        vocabulary = export_dir / manifest["tokenizer"]["file"]
        tokenizer = None
        if profile == "production":
            write_encoders(out, manifest, files, "tensorrt_plan" if engines else "onnxruntime_onnx", encoder_batch)
            tokenizer = tokenizer_config(manifest, batch, token_bucket, **delay)
            _write_python_model(out, "serving.models.tokenizer", {"tokenizer.txt.gz": vocabulary}, tokenizer)
        else:
            for name, spec in manifest["models"].items():
                model_files, params = {"model.onnx": files[name]}, {"threads": threads}
                if name == TEXT_ENCODER:  # TEXT in: it tokenizes, with the merges beside its model.onnx
                    model_files["tokenizer.txt.gz"] = vocabulary
                    # two single-threaded text encoders: one runs a batch while the next one forms
                    config = text_encoder_config(manifest, encoder_batch[name], params, token_bucket, instances=2,
                                                 **delay)
                else:
                    config = python_config(name, spec["inputs"], spec["outputs"], encoder_batch[name], params, **delay)
                _write_python_model(out, "serving.models.onnx_encoder", model_files, config)
        search = gallery_config(manifest, batch, index_offset, added_offset,
                                kind="KIND_GPU" if profile == "production" else kind, **delay)
        _write_gallery_version(out, Path(gallery), search)
        image_batch = min(batch, encoder_batch[IMAGE_ENCODER])
        decoder = image_decoder_config(manifest, image_batch, **delay)
        _write_python_model(out, "serving.models.image_decoder", {}, decoder)
        _write_python_model(out, "serving.models.gallery_ingest", {}, ingest_config(
            manifest, batch, encoder_batch[IMAGE_ENCODER], index_offset, added_offset, **delay))
        _write_python_model(out, "serving.models.gallery_erase", {}, erase_config(manifest, index_offset, added_offset))
        write_config(out / ENSEMBLE, ensemble_config(tokenizer, read_config(out / TEXT_ENCODER), search))
        write_config(out / IMAGE_ENSEMBLE, image_ensemble_config(decoder, read_config(out / IMAGE_ENCODER), search))
        for ensemble in (ENSEMBLE, IMAGE_ENSEMBLE):
            (out / ensemble / "1").mkdir()
    return out


def gallery_versions(repo: str | os.PathLike) -> list[int]:
    folder = Path(repo) / GALLERY_MODEL
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def stage_gallery(repo: str | os.PathLike, gallery: str | os.PathLike, fingerprint: str) -> int:
    """Add a new version of gallery_search holding `gallery` (checked against the served
    checkpoint's fingerprint first); returns it. Load it with `publish_gallery`."""
    load_gallery(gallery, fingerprint=fingerprint, with_sets=False)
    repo = Path(repo)
    version = gallery_versions(repo)[-1] + 1
    _write_gallery_version(repo, Path(gallery), version=version)
    return version


def publish_gallery(repo: str | os.PathLike, gallery: str | os.PathLike, url: str) -> int:
    """Put a new gallery live on a running server (started with explicit model control) without
    a restart: stage it as the next version and reload the model. Triton's version policy
    (latest 1) serves the new version once it is ready; requests already running finish on the
    old one, which is then unloaded; ingest and erasure follow the new version. Versions before
    the previous one are deleted; a version the server did not load is deleted too (ValueError,
    one line). Refused while the served version has live additions or erasures, which the new
    file does not hold: compact them into a version first (`tbps compact`, offline)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException
    repo = Path(repo)
    # sealed first: an ingest or erasure that reaches the old version after this is refused (the
    # client is told to send it again), not acknowledged into a gallery no longer served
    store = LiveStore(repo / GALLERY_MODEL / str(gallery_versions(repo)[-1]) / LIVE_FOLDER)
    try:
        added, erased = store.seal()
        if added or erased:
            raise ValueError(f"the served gallery of {repo} has {added} live additions and {erased} erasures that "
                             f"{gallery} does not hold: stop the server and run `tbps compact {repo}` first")
        try:
            fingerprint = parameter(read_config(repo / GALLERY_MODEL), "fingerprint")
            version = stage_gallery(repo, gallery, fingerprint)
            client = grpcclient.InferenceServerClient(url)
            try:
                client.load_model(GALLERY_MODEL)
            except InferenceServerException as e:
                shutil.rmtree(repo / GALLERY_MODEL / str(version))
                raise ValueError(f"the server at {url} did not load gallery version {version}: {e.message()} (a "
                                 f"live update needs explicit model control: tbps serve, or tritonserver "
                                 f"--model-control-mode explicit)") from None
        except BaseException:
            store.unseal()  # still the served version: it takes ingests and erasures again
            raise
    finally:
        store.close()
    for follower in (INGEST_MODEL, ERASE_MODEL):  # they work on the latest version: reopen on it
        if (repo / follower).is_dir():
            client.load_model(follower)
    for old in gallery_versions(repo)[:-2]:
        shutil.rmtree(repo / GALLERY_MODEL / str(old))
    return version


def compact_repository(repo: str | os.PathLike) -> dict:
    """Offline (no server on `repo`): write the served gallery version plus its live additions
    minus its erasures as the next version, whose live state starts empty; the version before
    it is kept (a rollback), older ones deleted. What it kept and dropped, and the bytes before
    and after. The new version ranks exactly as the live gallery did (indices renumbered)."""
    repo = Path(repo)
    current = repo / GALLERY_MODEL / str(gallery_versions(repo)[-1])
    live_files = [f for f in (current / LIVE_FOLDER).rglob("*") if f.is_file()]
    before = gallery_bytes(current / GALLERY_FILE) + sum(f.stat().st_size for f in live_files)
    live = LiveGallery(current / LIVE_FOLDER, current / GALLERY_FILE, writer=False)
    # inside the repository (a name Triton does not take for a version): on its filesystem, so the
    # new version's files are links to these, not copies
    with tempfile.TemporaryDirectory(prefix=".compact-", dir=repo / GALLERY_MODEL) as tmp:
        report = live.compact(Path(tmp) / GALLERY_FILE)
        live.close()
        version = stage_gallery(repo, Path(tmp) / GALLERY_FILE, live.base.fingerprint)
    for old in gallery_versions(repo)[:-2]:
        shutil.rmtree(repo / GALLERY_MODEL / str(old))
    after = gallery_bytes(repo / GALLERY_MODEL / str(version) / GALLERY_FILE)
    return dict(report, gallery=str(repo / GALLERY_MODEL / str(version) / GALLERY_FILE), version=version,
                bytes_before=before, bytes_after=after)
