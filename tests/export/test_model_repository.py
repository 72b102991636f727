"""Triton model repository entries for the encoders: config.pbtxt parsed back, the layout on disk."""
import re

import pytest

from export.manifest import load_manifest
from export.model_repository import encoder_config, write_encoders


def parse_pbtxt(text: str) -> dict:
    """Protobuf text format, the subset config.pbtxt uses: `key: value`, `key { ... }`,
    `key [ ... ]`; a key repeated becomes a list."""
    tokens = re.findall(r'"[^"]*"|[{}\[\]:,]|[^\s{}\[\]:,]+', text)
    pos = 0

    def value():
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "{":
            return fields("}")
        if tok == "[":
            items = []
            while tokens[pos] != "]":
                items.append(value())
                if tokens[pos] == ",":
                    pos += 1
            pos += 1
            return items
        return tok[1:-1] if tok.startswith('"') else int(tok) if re.fullmatch(r"-?\d+", tok) else tok

    def fields(end):
        nonlocal pos
        out, repeated = {}, set()
        while pos < len(tokens) and tokens[pos] != end:
            key = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            v = value()
            if key not in out:
                out[key] = v
            else:
                if key not in repeated:
                    out[key], repeated = [out[key]], repeated | {key}
                out[key].append(v)
        pos += 1
        return out

    return fields(None)


@pytest.mark.parametrize("platform,file", [("onnxruntime_onnx", "model.onnx"), ("tensorrt_plan", "model.plan")])
def test_encoder_repository(exported, tmp_path, platform, file):
    folder = exported("esa")
    manifest = load_manifest(folder)
    # the engines stand in as copies of the ONNX files: the repository layout does not read them
    files = {name: folder / spec["file"] for name, spec in manifest["models"].items()}
    write_encoders(tmp_path / "repo", manifest, files, platform, max_batch_size=16, instances=2)
    for name, text_in, text_out, in_type, in_dims in (
            ("text_encoder", "input_ids", "text_sets", "TYPE_INT32", [77]),
            ("image_encoder", "pixels", "image_sets", "TYPE_FP32", [3, 64, 32])):
        model_dir = tmp_path / "repo" / name
        assert (model_dir / "1" / file).read_bytes() == files[name].read_bytes()
        config = parse_pbtxt((model_dir / "config.pbtxt").read_text())
        assert config["name"] == name and config["platform"] == platform and config["max_batch_size"] == 16
        assert config["input"] == [{"name": text_in, "data_type": in_type, "dims": in_dims}]
        assert config["output"] == [{"name": text_out, "data_type": "TYPE_FP32", "dims": [5, 128]}]
        assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 100}
        assert config["instance_group"] == [{"count": 2, "kind": "KIND_GPU"}]


def test_config_options_and_refusals():
    spec = [{"name": "x", "dtype": "float32", "shape": [-1, 4]}]
    text = encoder_config("m", "onnxruntime_onnx", spec, spec, 8, kind="KIND_CPU", preferred_batch_sizes=(4, 8))
    config = parse_pbtxt(text)
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    with pytest.raises(ValueError, match="unknown platform 'pytorch'"):
        encoder_config("m", "pytorch", spec, spec, 8)
    with pytest.raises(ValueError, match="max_batch_size and instances must be >= 1"):
        encoder_config("m", "tensorrt_plan", spec, spec, 0)
    with pytest.raises(ValueError, match="no Triton type for dtype 'complex64'"):
        encoder_config("m", "tensorrt_plan", [dict(spec[0], dtype="complex64")], spec, 8)
