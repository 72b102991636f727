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

With local shards (`local_shards` S, one per GPU): REPO/gallery_search_<i> hold the gallery's
slices (on GPU i), REPO/gallery_search is the python BLS model that queries them all and merges
their top-k (serving/models/gallery_merge.py), and ingest and erasure work over every shard.

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

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from export import ann_index
from export.ann_index import build_gallery_indexes
from export.gallery import gallery_bytes, load_gallery
from export.gallery_writer import install_gallery
from export.manifest import load_manifest
from export.model_repository import write_encoders, write_model
from export.triton_config import (ENSEMBLE, ERASE_MODEL, GALLERY_MODEL, IMAGE_ENCODER, IMAGE_ENSEMBLE, INGEST_MODEL,
                                  TEXT_ENCODER, TOKEN_BUCKET, ensemble_config, erase_config,
                                  gallery_config, image_decoder_config, image_ensemble_config, ingest_config,
                                  live_parameters, merge_config, parameter, python_config, read_config,
                                  text_encoder_config, tokenizer_config, write_config)
from serving.access import GRPC_ADMIN_HEADER
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


def _write_gallery_version(repo: Path, gallery: Path, config=None, version: int = 1,
                           model: str = GALLERY_MODEL) -> Path:
    """gallery_search (or a local shard's `model`) version `version`: the gallery (as a version-3
    directory: a version 1 or 2 file is converted), and its live state started empty."""
    folder = _write_python_model(repo, "serving.models.gallery_search", {}, config, model, version)
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


def _write_local_shards(repo: Path, gallery: Path, manifest: dict, shards: int, max_batch: int, index_offset: int,
                        added_offset: int | None, **options) -> list[dict[str, str]]:
    """gallery_search_0 .. shards-1, each a contiguous slice of `gallery` (on GPU i where their
    kind is KIND_GPU), numbered from `index_offset`; shard i's additions from `added_offset`
    (default: right after the gallery) + i * LOCAL_ADDED_RANGE. Their live parameters."""
    from serving.shards import LOCAL_ADDED_RANGE, split_gallery
    with tempfile.TemporaryDirectory(prefix=".shards-", dir=repo) as tmp:
        parts = split_gallery(gallery, shards, tmp)
        total = len(load_gallery(gallery, with_sets=False))
        added = index_offset + total if added_offset is None else added_offset
        stores = []
        for i, (part, first) in enumerate(parts):
            if options.get("two_stage"):  # a slice is new segments: indexed anew
                build_gallery_indexes(part, options["two_stage"]["ann_proxy"], progress=lambda _: None)
            config = gallery_config(manifest, max_batch, index_offset + first, added + i * LOCAL_ADDED_RANGE, shard=i,
                                    **options)
            _write_gallery_version(repo, part, config, model=config.name)
            stores.append(live_parameters(manifest, index_offset + first, added + i * LOCAL_ADDED_RANGE, config.name))
    return stores


def write_repository(source: str | os.PathLike, gallery: str | os.PathLike, out: str | os.PathLike,
                     profile: str = "portable", engines: str | os.PathLike | None = None,
                     max_batch_size: int | None = None, index_offset: int = 0, added_offset: int | None = None,
                     kind: str = "KIND_CPU", threads: int = 1, batching: bool = True,
                     token_bucket: int | None = None, local_shards: int = 1, two_stage: int | None = None,
                     ann_proxy: str = "set", nprobe: int | None = None, ann_missing: str = "scan") -> Path:
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
    (shards; serving/models/live.py). `local_shards`: split the gallery over this many
    gallery_search_<i> models of this one server, one per GPU (production), merged inside the
    server by gallery_search (serving/models/gallery_merge.py). `two_stage`: each query's
    candidates from every segment's ANN index (tbps ann, `ann_proxy`; `nprobe` IVF lists),
    scored exactly; segments without a usable index are scanned, or with `ann_missing`
    "refuse" gallery_search refuses to load (naming them)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; available: {', '.join(PROFILES)}")
    if engines is not None and profile != "production":
        raise ValueError("engines are served by the production profile: add --profile production")
    from serving.shards import MAX_LOCAL_SHARDS  # serving.shards writes repositories with this module
    if two_stage is not None and two_stage < 1:
        raise ValueError(f"two-stage candidates must be at least 1, got {two_stage}")
    if ann_missing not in ann_index.MISSING:
        raise ValueError(f"ann_missing must be one of {', '.join(ann_index.MISSING)}, got {ann_missing!r}")
    if isinstance(local_shards, bool) or not isinstance(local_shards, int) or not 1 <= local_shards <= MAX_LOCAL_SHARDS:
        raise ValueError(f"local shards must be a whole number from 1 to {MAX_LOCAL_SHARDS}, got {local_shards!r}")
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
        search_kind = "KIND_GPU" if profile == "production" else kind
        staged = None if two_stage is None else {"candidates": str(two_stage), "ann_proxy": ann_proxy,
                                                 "nprobe": str(nprobe or ""), "ann_missing": ann_missing}
        if local_shards == 1:
            search = gallery_config(manifest, batch, index_offset, added_offset, kind=search_kind, two_stage=staged,
                                    **delay)
            _write_gallery_version(out, Path(gallery), search)
            stores = [live_parameters(manifest, index_offset, added_offset)]
        else:
            stores = _write_local_shards(out, Path(gallery), manifest, local_shards, batch, index_offset, added_offset,
                                         kind=search_kind, two_stage=staged, **delay)
            search = merge_config(manifest, batch, [s["gallery_model"] for s in stores], **delay)
            _write_python_model(out, "serving.models.gallery_merge", {}, search)
        image_batch = min(batch, encoder_batch[IMAGE_ENCODER])
        decoder = image_decoder_config(manifest, image_batch, **delay)
        _write_python_model(out, "serving.models.image_decoder", {}, decoder)
        _write_python_model(out, "serving.models.gallery_ingest", {}, ingest_config(
            manifest, batch, encoder_batch[IMAGE_ENCODER], stores, **delay))
        _write_python_model(out, "serving.models.gallery_erase", {}, erase_config(manifest, stores))
        write_config(out / ENSEMBLE, ensemble_config(tokenizer, read_config(out / TEXT_ENCODER), search))
        write_config(out / IMAGE_ENSEMBLE, image_ensemble_config(decoder, read_config(out / IMAGE_ENCODER), search))
        for ensemble in (ENSEMBLE, IMAGE_ENSEMBLE):
            (out / ensemble / "1").mkdir()
    return out


def gallery_versions(repo: str | os.PathLike, model: str = GALLERY_MODEL) -> list[int]:
    folder = Path(repo) / model
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def gallery_models(repo: str | os.PathLike) -> list[str]:
    """The models holding the served gallery: gallery_search, or its local shards in order."""
    config = read_config(Path(repo) / GALLERY_MODEL)
    return json.loads(parameter(config, "shards")) if "shards" in config.parameters else [GALLERY_MODEL]


def stage_gallery(repo: str | os.PathLike, gallery: str | os.PathLike, fingerprint: str,
                  model: str = GALLERY_MODEL) -> int:
    """Add a new version of gallery_search (or local shard `model`) holding `gallery` (checked
    against the served checkpoint's fingerprint first); returns it. Load it with `publish_gallery`."""
    load_gallery(gallery, fingerprint=fingerprint, with_sets=False)
    repo = Path(repo)
    version = gallery_versions(repo, model)[-1] + 1
    _write_gallery_version(repo, Path(gallery), version=version, model=model)
    return version


def publish_gallery(repo: str | os.PathLike, gallery: str | os.PathLike, url: str, admin_key: str | None = None,
                    connection: dict | None = None) -> int:
    """Put a new gallery live on a running server (started with explicit model control) without
    a restart: stage it as the next version and reload the model. Triton's version policy
    (latest 1) serves the new version once it is ready; requests already running finish on the
    old one, which is then unloaded; ingest and erasure follow the new version. Versions before
    the previous one are deleted; a version the server did not load is deleted too (ValueError,
    one line). Refused while the served version has live additions or erasures, which the new
    file does not hold: compact them into a version first (`tbps compact`, offline). A secured
    server: its `admin_key` (model control is an admin protocol) and `connection`, the TLS
    arguments of serving.client.Credentials.connection()."""
    import tritonclient.grpc as grpcclient
    headers = {GRPC_ADMIN_HEADER: admin_key} if admin_key else None
    from tritonclient.utils import InferenceServerException
    repo = Path(repo)
    if gallery_models(repo) != [GALLERY_MODEL]:
        raise ValueError(f"{repo} serves its gallery split over local shards ({', '.join(gallery_models(repo))}); a "
                         f"new gallery file goes live as a new repository: tbps repo --local-shards")
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
            client = grpcclient.InferenceServerClient(url, **(connection or {}))
            try:
                client.load_model(GALLERY_MODEL, headers=headers)
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
            client.load_model(follower, headers=headers)
    for old in gallery_versions(repo)[:-2]:
        shutil.rmtree(repo / GALLERY_MODEL / str(old))
    return version


def _renumber_local_shards(repo: Path, models: list[str]) -> None:
    """After a compaction: shard i's items follow shard i-1's again (each base now holds its
    additions), in the shards' configs and in the stores of gallery_ingest and gallery_erase."""
    first, offsets = int(parameter(read_config(repo / models[0]), "index_offset")), {}
    for model in models:
        config = read_config(repo / model)
        config.parameters["index_offset"].string_value = offsets[model] = str(first)
        write_config(repo / model, config)
        served = repo / model / str(gallery_versions(repo, model)[-1]) / GALLERY_FILE
        first += len(load_gallery(served, with_sets=False))
    for follower in (INGEST_MODEL, ERASE_MODEL):
        config = read_config(repo / follower)
        stores = [dict(store, index_offset=offsets[store["gallery_model"]])
                  for store in json.loads(parameter(config, "stores"))]
        config.parameters["stores"].string_value = json.dumps(stores)
        write_config(repo / follower, config)


def compact_repository(repo: str | os.PathLike) -> dict:
    """Offline (no server on `repo`): write the served gallery version plus its live additions
    minus its erasures as the next version, whose live state starts empty; the version before
    it is kept (a rollback), older ones deleted. What it kept and dropped, and the bytes before
    and after. The new version ranks exactly as the live gallery did (indices renumbered). Local
    shards are compacted together: every shard is written before any version is staged, then
    the shards are numbered one after the other again (a rollback then needs the old offsets)."""
    repo = Path(repo)
    models = gallery_models(repo)
    reports = []
    with contextlib.ExitStack() as stack:
        for model in models:
            current = repo / model / str(gallery_versions(repo, model)[-1])
            live_files = [f for f in (current / LIVE_FOLDER).rglob("*") if f.is_file()]
            before = gallery_bytes(current / GALLERY_FILE) + sum(f.stat().st_size for f in live_files)
            live = LiveGallery(current / LIVE_FOLDER, current / GALLERY_FILE, writer=False)
            # inside the repository (a name Triton does not take for a version): on its filesystem, so the
            # new version's files are links to these, not copies
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".compact-", dir=repo / model)))
            report = live.compact(tmp / GALLERY_FILE)
            live.close()
            proxy = read_config(repo / model).parameters["ann_proxy"].string_value
            if proxy:  # two-stage: the new version's segments get their indexes before it is staged
                build_gallery_indexes(tmp / GALLERY_FILE, proxy, progress=lambda _: None)
            reports.append(dict(report, model=model, fingerprint=live.base.fingerprint, bytes_before=before))
        for r in reports:
            r["version"] = stage_gallery(repo, r["gallery"], r.pop("fingerprint"), r["model"])
    for r in reports:
        for old in gallery_versions(repo, r["model"])[:-2]:
            shutil.rmtree(repo / r["model"] / str(old))
        r["gallery"] = str(repo / r["model"] / str(r["version"]) / GALLERY_FILE)
        r["bytes_after"] = gallery_bytes(r["gallery"])
    if len(models) > 1:
        _renumber_local_shards(repo, models)
    total = {key: sum(r[key] for r in reports) for key in ("kept", "dropped", "added", "bytes_before", "bytes_after")}
    return dict(total, gallery=", ".join(r["gallery"] for r in reports), version=max(r["version"] for r in reports))
