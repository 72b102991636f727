"""Every Triton model configuration of the project: built as Triton's own protobuf
(`model_config_pb2.ModelConfig`), written and read back with protobuf's text format.

One owner for `config.pbtxt`: the encoders of both profiles, the python models (tokenizer,
gallery_search, the portable encoders) and the `person_search` ensemble are built here, and
whatever reads a config back (the served fingerprint, the client's batch limit) parses it.
Tensor specs are the export manifest's ({"name", "dtype", "shape"} with the batch first, -1);
the batch dimension is implied by max_batch_size, so dims are the shape without it (-1: any
size, as the text encoder's token axis).

Token padding: the tokenizer pads each request's captions to their longest (an encoder with a
dynamic token axis costs what the caption costs, not the 77-token context). Triton's dynamic
batcher only joins requests whose other dims are equal, so where the encoder is Triton's own
backend (production) the tokenizer model rounds the length up to a bucket (TOKEN_BUCKET); the
portable python text encoder takes TEXT and tokenizes itself (one python-backend hop less per
query), padding a batch to its longest.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

CONFIG_FILE = "config.pbtxt"
TOKENIZER, TEXT_ENCODER, GALLERY_MODEL, ENSEMBLE = "tokenizer", "text_encoder", "gallery_search", "person_search"
IMAGE_ENCODER, IMAGE_DECODER, IMAGE_ENSEMBLE = "image_encoder", "image_decoder", "image_search"
INGEST_MODEL, ERASE_MODEL = "gallery_ingest", "gallery_erase"
ENCODER_PLATFORMS = ("tensorrt_plan", "onnxruntime_onnx")
DATA_TYPES = {"float32": mc.TYPE_FP32, "float16": mc.TYPE_FP16, "int32": mc.TYPE_INT32, "int64": mc.TYPE_INT64,
              "bool": mc.TYPE_BOOL, "string": mc.TYPE_STRING}  # Triton's BYTES tensors: the serving models' text in, paths out
KINDS = {"KIND_GPU": mc.ModelInstanceGroup.KIND_GPU, "KIND_CPU": mc.ModelInstanceGroup.KIND_CPU}
RESULTS = [{"name": name, "dtype": dtype, "shape": [-1, -1]}  # [batch, k] each; CAMERA_NAMES, TIMES: "" unknown
           for name, dtype in (("SCORES", "float32"), ("IDS", "int64"), ("PATHS", "string"), ("INDICES", "int64"),
                               ("CAMERA_NAMES", "string"), ("TIMES", "string"))]
# per query: True when its hits are the exact search's, False when an ANN index chose the candidates
EXACT = {"name": "EXACT", "dtype": "bool", "shape": [-1, 1]}
SEARCH_OUTPUTS = [*RESULTS, EXACT]  # what gallery_search and the ensembles answer
TEXT = {"name": "TEXT", "dtype": "string", "shape": [-1, 1]}
TOPK = {"name": "TOPK", "dtype": "int32", "shape": [-1, 1]}
IMAGE = {"name": "IMAGE", "dtype": "string", "shape": [-1, 1]}  # an encoded image file (JPEG, PNG, ...)
# a query's filter, one per request (optional: absent = no filter): camera names, ISO 8601 window
FILTERS = [{"name": "CAMERAS", "dtype": "string", "shape": [-1, -1], "optional": True},
           {"name": "SINCE", "dtype": "string", "shape": [-1, 1], "optional": True},
           {"name": "UNTIL", "dtype": "string", "shape": [-1, 1], "optional": True}]
QUERY_SETS = "QUERY_SETS"  # a local shard's answer to a LIKE: the item's sets, as an image query
LIKE = {"name": "LIKE", "dtype": "int64", "shape": [-1, 1], "optional": True}  # a gallery item as the query
# ingest: one row per image; PERSON -1, CAMERA "" and TIME "" for unknown
INGEST_INPUTS = [IMAGE, {"name": "PATH", "dtype": "string", "shape": [-1, 1]},
                 {"name": "PERSON", "dtype": "int64", "shape": [-1, 1]},
                 {"name": "CAMERA", "dtype": "string", "shape": [-1, 1]},
                 {"name": "TIME", "dtype": "string", "shape": [-1, 1]}]
INGEST_OUTPUTS = [{"name": "INDEX", "dtype": "int64", "shape": [-1, 1]},   # -1: refused, see ERROR
                  {"name": "ERROR", "dtype": "string", "shape": [-1, 1]}]  # "": ingested
TOKEN_BUCKET = 16  # production: token lengths rounded up to a multiple of this, so requests batch


def _tensors(field, specs: list[dict], ragged: tuple[str, ...] = (), batched: bool = True) -> None:
    """Specs' shapes start with the batch (-1), implied by max_batch_size, unless not `batched`."""
    for spec in specs:
        if spec["dtype"] not in DATA_TYPES:
            raise ValueError(f"tensor {spec['name']!r}: no Triton type for dtype {spec['dtype']!r}")
        tensor = field.add(name=spec["name"], data_type=DATA_TYPES[spec["dtype"]],
                           dims=spec["shape"][1:] if batched else spec["shape"])
        if spec.get("optional"):
            tensor.optional = True
        if spec["name"] in ragged:
            tensor.allow_ragged_batch = True


def _model(name: str, inputs: list[dict], outputs: list[dict], max_batch_size: int, instances: int, kind: str,
           max_queue_delay_us: int | None, ragged: tuple[str, ...] = (), **fields) -> mc.ModelConfig:
    if max_batch_size < 1 or instances < 1:
        raise ValueError(f"max_batch_size and instances must be >= 1, got {max_batch_size} and {instances}")
    if kind not in KINDS:
        raise ValueError(f"instance kind must be KIND_GPU or KIND_CPU, got {kind!r}")
    config = mc.ModelConfig(name=name, max_batch_size=max_batch_size, **fields)
    _tensors(config.input, inputs, ragged)
    _tensors(config.output, outputs)
    if max_queue_delay_us is not None:  # None: no dynamic batching, one request per execution
        config.dynamic_batching.CopyFrom(mc.ModelDynamicBatching(max_queue_delay_microseconds=max_queue_delay_us))
    config.instance_group.add(count=instances, kind=KINDS[kind])
    return config


def encoder_config(name: str, platform: str, inputs: list[dict], outputs: list[dict], max_batch_size: int,
                   instances: int = 1, kind: str = "KIND_GPU", max_queue_delay_us: int = 100,
                   preferred_batch_sizes: tuple[int, ...] = ()) -> mc.ModelConfig:
    """An encoder served by one of Triton's own backends, requests batched dynamically."""
    if platform not in ENCODER_PLATFORMS:
        raise ValueError(f"unknown platform {platform!r}; available: {', '.join(ENCODER_PLATFORMS)}")
    config = _model(name, inputs, outputs, max_batch_size, instances, kind, max_queue_delay_us, platform=platform)
    config.dynamic_batching.preferred_batch_size.extend(preferred_batch_sizes)
    return config


def python_config(name: str, inputs: list[dict], outputs: list[dict], max_batch_size: int,
                  parameters: dict[str, str] | None = None, instances: int = 1, kind: str = "KIND_CPU",
                  max_queue_delay_us: int | None = 0, ragged: tuple[str, ...] = ()) -> mc.ModelConfig:
    """A python-backend model. The default queue delay is 0: requests that arrive while the
    instance is busy are still batched together, but a lone request does not wait. Inputs named
    in `ragged` batch across requests whatever their non-batch dims (the model handles them)."""
    config = _model(name, inputs, outputs, max_batch_size, instances, kind, max_queue_delay_us, ragged,
                    backend="python")
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = str(value)
    return config


def text_input(manifest: dict) -> dict:
    """The text encoder's input spec: [batch, tokens] (-1: dynamic), or [batch, context] (version 1)."""
    (ids,) = manifest["models"][TEXT_ENCODER]["inputs"]
    return ids


def token_padding(manifest: dict, bucket: int = 1) -> dict[str, str]:
    """The parameters of the model that tokenizes: where the text encoder's token axis is
    dynamic, each request is padded to its longest caption rounded up to a multiple of `bucket`
    (`pad` = "longest", `multiple_of`); otherwise to the full context."""
    dynamic = text_input(manifest)["shape"][1] == -1
    return {"pad": "longest", "multiple_of": str(bucket)} if dynamic else {"pad": "context", "multiple_of": "1"}


def tokenizer_config(manifest: dict, max_batch_size: int, bucket: int = 1, **options) -> mc.ModelConfig:
    """tokenizer (production): TEXT -> input_ids, the text encoder's input, padded as token_padding says."""
    ids = text_input(manifest)
    return python_config(TOKENIZER, [TEXT], [{k: ids[k] for k in ("name", "dtype", "shape")}], max_batch_size,
                         token_padding(manifest, bucket), **options)


def text_encoder_config(manifest: dict, max_batch_size: int, parameters: dict[str, str], bucket: int = 1,
                        **options) -> mc.ModelConfig:
    """text_encoder (portable, python): TEXT -> text_sets, tokenizing in the same model (the
    tokenizer's padding parameters beside `parameters`): a query crosses one python model less."""
    sets = manifest["models"][TEXT_ENCODER]["outputs"]
    return python_config(TEXT_ENCODER, [TEXT], sets, max_batch_size, {**parameters, **token_padding(manifest, bucket)},
                         **options)


def live_parameters(manifest: dict, index_offset: int, added_offset: int | None,
                    gallery_model: str = GALLERY_MODEL) -> dict[str, str]:
    """What the models over the live gallery share: the checkpoint, the gallery_search model whose
    latest version holds the gallery, and how local indices map to global ones (base items from
    `index_offset`, additions from `added_offset`; "": right after the base, one server)."""
    return {"fingerprint": manifest["fingerprint"], "gallery_model": gallery_model,
            "index_offset": str(index_offset), "added_offset": "" if added_offset is None else str(added_offset)}


def shard_model(shard: int) -> str:
    """The gallery_search model of one local shard (one GPU's slice of the gallery)."""
    return f"{GALLERY_MODEL}_{shard}"


def _gallery_inputs(manifest: dict) -> list[dict]:
    text_sets = manifest["models"][TEXT_ENCODER]["outputs"][0]
    image_sets = manifest["models"][IMAGE_ENCODER]["outputs"][0]
    # TEXT and IMAGE: the query as the user gave it, fed by the ensembles for the audit trail
    return [dict(text_sets, optional=True), dict(image_sets, optional=True), LIKE, TOPK, *FILTERS,
            dict(TEXT, optional=True), dict(IMAGE, optional=True)]


def gallery_config(manifest: dict, max_batch_size: int, index_offset: int = 0, added_offset: int | None = None,
                   shard: int | None = None, two_stage: dict[str, str] | None = None, **options) -> mc.ModelConfig:
    """gallery_search: a query (exactly one of text_sets, image_sets or LIKE) + TOPK and an
    optional filter -> the results over the live gallery. It refuses a gallery of another
    checkpoint than `fingerprint`; see live_parameters for the indices. A local `shard` is
    gallery_search_<shard>, on GPU <shard> where its kind is KIND_GPU, and also answers
    QUERY_SETS (a LIKE item's sets) for the merge that fronts it (merge_config). `two_stage`:
    {"candidates", "ann_proxy", "nprobe"}, two-stage search over the segments' ANN indexes."""
    name, outputs = GALLERY_MODEL, SEARCH_OUTPUTS
    if shard is not None:
        image_sets = manifest["models"][IMAGE_ENCODER]["outputs"][0]
        name, outputs = shard_model(shard), [*SEARCH_OUTPUTS, dict(image_sets, name=QUERY_SETS, dtype="float32")]
    config = python_config(name, _gallery_inputs(manifest), outputs, max_batch_size,
                           {**live_parameters(manifest, index_offset, added_offset, name), **(two_stage or {})},
                           ragged=("CAMERAS",), **options)
    if shard is not None and config.instance_group[0].kind == KINDS["KIND_GPU"]:
        config.instance_group[0].gpus.append(shard)
    return config


def merge_config(manifest: dict, max_batch_size: int, shards: list[str], **options) -> mc.ModelConfig:
    """gallery_search over local shards (models `shards`): gallery_search's inputs and outputs,
    answered by querying every shard and merging their top-k inside the server (a python BLS
    model on CPU), so the ensembles and every client see one gallery."""
    image_sets = manifest["models"][IMAGE_ENCODER]["outputs"][0]
    params = {"shards": json.dumps(shards), "image_sets": json.dumps(image_sets)}
    return python_config(GALLERY_MODEL, _gallery_inputs(manifest), SEARCH_OUTPUTS, max_batch_size, params,
                         ragged=("CAMERAS",), **options)


def image_decoder_config(manifest: dict, max_batch_size: int, **options) -> mc.ModelConfig:
    """image_decoder: IMAGE (encoded bytes) -> the image encoder's pixels, the eval transform."""
    (pixels,) = manifest["models"][IMAGE_ENCODER]["inputs"]
    return python_config(IMAGE_DECODER, [IMAGE], [pixels], max_batch_size, {"image": json.dumps(manifest["image"])},
                         **options)


def store_parameters(manifest: dict, stores: list[dict[str, str]]) -> dict[str, str]:
    """gallery_ingest's and gallery_erase's parameters: the checkpoint and the live stores they
    work on (live_parameters of each gallery_search: one, or one per local shard)."""
    return {"fingerprint": manifest["fingerprint"],
            "stores": json.dumps([{k: v for k, v in s.items() if k != "fingerprint"} for s in stores])}


def ingest_config(manifest: dict, max_batch_size: int, encoder_batch: int, stores: list[dict[str, str]],
                  **options) -> mc.ModelConfig:
    """gallery_ingest: images + path, person, camera, time -> their global indices, durable, in
    the store (of `stores`) holding the fewest live items. One instance: the live gallery's one
    adding process. It encodes through the image_encoder model (its tensors and
    `encoder_batch`, its max_batch_size, are in the parameters)."""
    spec = manifest["models"][IMAGE_ENCODER]
    encoder = {"model": IMAGE_ENCODER, "input": spec["inputs"][0]["name"], "output": spec["outputs"][0]["name"],
               "max_batch": encoder_batch}
    params = dict(store_parameters(manifest, stores), image=json.dumps(manifest["image"]), encoder=json.dumps(encoder))
    return python_config(INGEST_MODEL, INGEST_INPUTS, INGEST_OUTPUTS, max_batch_size, params, instances=1, **options)


def erase_config(manifest: dict, stores: list[dict[str, str]]) -> mc.ModelConfig:
    """gallery_erase: PATHS and/or PERSONS (optional, any number) -> ERASED (their global
    indices, over every store of `stores`) and LIVE (items left). Not batched: one request is
    one erasure."""
    config = mc.ModelConfig(name=ERASE_MODEL, max_batch_size=0, backend="python")
    _tensors(config.input, [{"name": "PATHS", "dtype": "string", "shape": [-1], "optional": True},
                            {"name": "PERSONS", "dtype": "int64", "shape": [-1], "optional": True}],
             batched=False)
    _tensors(config.output, [{"name": "ERASED", "dtype": "int64", "shape": [-1]},
                             {"name": "LIVE", "dtype": "int64", "shape": [1]}], batched=False)
    config.instance_group.add(count=1, kind=KINDS["KIND_CPU"])
    for key, value in store_parameters(manifest, stores).items():
        config.parameters[key].string_value = value
    return config


def _ensemble(name: str, inputs: list[dict], steps: list, outputs: list[dict]) -> mc.ModelConfig:
    """An ensemble of `steps` (model config, {model input: ensemble tensor}, {model output:
    ensemble tensor}); its max_batch_size is the smallest of its steps' (a larger one would be
    refused at load)."""
    config = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=min(m.max_batch_size for m, _, _ in steps))
    _tensors(config.input, inputs)
    _tensors(config.output, outputs)
    for model, model_inputs, model_outputs in steps:
        config.ensemble_scheduling.step.add(model_name=model.name, model_version=-1, input_map=model_inputs,
                                            output_map=model_outputs)
    return config


_FILTER_MAP = {f["name"]: f["name"] for f in FILTERS}
_RESULT_MAP = {r["name"]: r["name"] for r in SEARCH_OUTPUTS}


def ensemble_config(tokenizer: mc.ModelConfig | None, text_encoder: mc.ModelConfig,
                    gallery: mc.ModelConfig) -> mc.ModelConfig:
    """person_search: TEXT + TOPK (+ filter) -> tokenizer -> text_encoder -> gallery_search;
    without a tokenizer (portable) the text encoder takes TEXT."""
    (sets,) = text_encoder.output
    text = "TEXT" if tokenizer is None else "ids"
    steps = [] if tokenizer is None else [(tokenizer, {"TEXT": "TEXT"}, {tokenizer.output[0].name: "ids"})]
    return _ensemble(ENSEMBLE, [TEXT, TOPK, *FILTERS], steps + [
        (text_encoder, {text_encoder.input[0].name: text}, {sets.name: "sets"}),
        (gallery, {sets.name: "sets", "TOPK": "TOPK", "TEXT": "TEXT", **_FILTER_MAP}, _RESULT_MAP)], SEARCH_OUTPUTS)


def image_ensemble_config(decoder: mc.ModelConfig, image_encoder: mc.ModelConfig,
                          gallery: mc.ModelConfig) -> mc.ModelConfig:
    """image_search: IMAGE + TOPK (+ filter) -> image_decoder -> image_encoder -> gallery_search."""
    (pixels,), (sets,) = decoder.output, image_encoder.output
    return _ensemble(IMAGE_ENSEMBLE, [IMAGE, TOPK, *FILTERS], [
        (decoder, {"IMAGE": "IMAGE"}, {pixels.name: "pixels"}),
        (image_encoder, {image_encoder.input[0].name: "pixels"}, {sets.name: "sets"}),
        (gallery, {sets.name: "sets", "TOPK": "TOPK", "IMAGE": "IMAGE", **_FILTER_MAP}, _RESULT_MAP)], SEARCH_OUTPUTS)


def write_config(folder: str | os.PathLike, config: mc.ModelConfig) -> Path:
    path = Path(folder) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text_format.MessageToString(config))
    return path


def read_config(folder: str | os.PathLike) -> mc.ModelConfig:
    """The ModelConfig of a model folder (REPO/<model>/config.pbtxt)."""
    path = Path(folder) / CONFIG_FILE
    try:
        return text_format.Parse(path.read_text(), mc.ModelConfig())
    except text_format.ParseError as e:
        raise ValueError(f"{path}: not a Triton model config ({e})") from None


def parameter(config: mc.ModelConfig, key: str) -> str:
    if key not in config.parameters:
        raise ValueError(f"model {config.name!r} has no parameter {key!r} in its config")
    return config.parameters[key].string_value
