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

import os
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

CONFIG_FILE = "config.pbtxt"
TOKENIZER, TEXT_ENCODER, GALLERY_MODEL, ENSEMBLE = "tokenizer", "text_encoder", "gallery_search", "person_search"
ENCODER_PLATFORMS = ("tensorrt_plan", "onnxruntime_onnx")
DATA_TYPES = {"float32": mc.TYPE_FP32, "float16": mc.TYPE_FP16, "int32": mc.TYPE_INT32, "int64": mc.TYPE_INT64,
              "string": mc.TYPE_STRING}  # Triton's BYTES tensors: the serving models' text in, paths out
KINDS = {"KIND_GPU": mc.ModelInstanceGroup.KIND_GPU, "KIND_CPU": mc.ModelInstanceGroup.KIND_CPU}
RESULTS = [{"name": name, "dtype": dtype, "shape": [-1, -1]}  # [batch, k] each
           for name, dtype in (("SCORES", "float32"), ("IDS", "int64"), ("PATHS", "string"), ("INDICES", "int64"))]
TEXT = {"name": "TEXT", "dtype": "string", "shape": [-1, 1]}
TOPK = {"name": "TOPK", "dtype": "int32", "shape": [-1, 1]}
TOKEN_BUCKET = 16  # production: token lengths rounded up to a multiple of this, so requests batch


def _tensors(field, specs: list[dict]) -> None:
    for spec in specs:
        if spec["dtype"] not in DATA_TYPES:
            raise ValueError(f"tensor {spec['name']!r}: no Triton type for dtype {spec['dtype']!r}")
        field.add(name=spec["name"], data_type=DATA_TYPES[spec["dtype"]], dims=spec["shape"][1:])


def _model(name: str, inputs: list[dict], outputs: list[dict], max_batch_size: int, instances: int, kind: str,
           max_queue_delay_us: int | None, **fields) -> mc.ModelConfig:
    if max_batch_size < 1 or instances < 1:
        raise ValueError(f"max_batch_size and instances must be >= 1, got {max_batch_size} and {instances}")
    if kind not in KINDS:
        raise ValueError(f"instance kind must be KIND_GPU or KIND_CPU, got {kind!r}")
    config = mc.ModelConfig(name=name, max_batch_size=max_batch_size, **fields)
    _tensors(config.input, inputs)
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
                  max_queue_delay_us: int | None = 0) -> mc.ModelConfig:
    """A python-backend model. The default queue delay is 0: requests that arrive while the
    instance is busy are still batched together, but a lone request does not wait."""
    config = _model(name, inputs, outputs, max_batch_size, instances, kind, max_queue_delay_us, backend="python")
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


def gallery_config(manifest: dict, max_batch_size: int, index_offset: int = 0, **options) -> mc.ModelConfig:
    """gallery_search: the text encoder's sets + TOPK -> the results; it refuses a gallery of
    another checkpoint than `fingerprint`, and numbers its images from `index_offset` (shards)."""
    sets = manifest["models"][TEXT_ENCODER]["outputs"][0]
    return python_config(GALLERY_MODEL, [sets, TOPK], RESULTS, max_batch_size,
                         {"fingerprint": manifest["fingerprint"], "index_offset": str(index_offset)}, **options)


def ensemble_config(tokenizer: mc.ModelConfig | None, text_encoder: mc.ModelConfig,
                    gallery: mc.ModelConfig) -> mc.ModelConfig:
    """person_search: TEXT + TOPK -> tokenizer -> text_encoder -> gallery_search -> the results;
    without a tokenizer (portable) the text encoder takes TEXT. Its max_batch_size is the
    smallest of its steps' (a larger one would be refused at load)."""
    models = [m for m in (tokenizer, text_encoder, gallery) if m is not None]
    config = mc.ModelConfig(name=ENSEMBLE, platform="ensemble", max_batch_size=min(m.max_batch_size for m in models))
    _tensors(config.input, [TEXT, TOPK])
    _tensors(config.output, RESULTS)
    (sets,) = text_encoder.output
    text = "TEXT" if tokenizer is None else "ids"
    steps = [] if tokenizer is None else [(tokenizer, {"TEXT": "TEXT"}, {tokenizer.output[0].name: "ids"})]
    steps += [(text_encoder, {text_encoder.input[0].name: text}, {sets.name: "sets"}),
              (gallery, {gallery.input[0].name: "sets", "TOPK": "TOPK"}, {r["name"]: r["name"] for r in RESULTS})]
    for model, inputs, outputs in steps:
        config.ensemble_scheduling.step.add(model_name=model.name, model_version=-1, input_map=inputs,
                                            output_map=outputs)
    return config


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
