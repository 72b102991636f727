"""Triton model repository entries for the encoders: config.pbtxt parsed back with protobuf's
text format (Triton's own parser's grammar), the layout on disk."""
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.manifest import load_manifest
from export.model_repository import write_encoders
from export.triton_config import encoder_config, parameter, python_config, read_config, write_config


@pytest.mark.parametrize("platform,file", [("onnxruntime_onnx", "model.onnx"), ("tensorrt_plan", "model.plan")])
def test_encoder_repository(exported, tmp_path, platform, file):
    folder = exported("esa")
    manifest = load_manifest(folder)
    # the engines stand in as copies of the ONNX files: the repository layout does not read them
    files = {name: folder / spec["file"] for name, spec in manifest["models"].items()}
    write_encoders(tmp_path / "repo", manifest, files, platform, max_batch_size={"text_encoder": 16,
                                                                                   "image_encoder": 4}, instances=2)
    for name, text_in, text_out, in_type, in_dims, batch in (
            ("text_encoder", "input_ids", "text_sets", mc.TYPE_INT32, [-1], 16),  # any length up to 77
            ("image_encoder", "pixels", "image_sets", mc.TYPE_FP32, [3, 64, 32], 4)):
        model_dir = tmp_path / "repo" / name
        assert (model_dir / "1" / file).read_bytes() == files[name].read_bytes()
        config = text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())
        assert config.name == name and config.platform == platform and config.max_batch_size == batch
        assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [(text_in, in_type, in_dims)]
        assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [(text_out, mc.TYPE_FP32, [5, 128])]
        assert config.dynamic_batching.max_queue_delay_microseconds == 100
        assert [(g.count, g.kind) for g in config.instance_group] == [(2, mc.ModelInstanceGroup.KIND_GPU)]


def test_config_options_and_refusals():
    spec = [{"name": "x", "dtype": "float32", "shape": [-1, 4]}]
    config = encoder_config("m", "onnxruntime_onnx", spec, spec, 8, kind="KIND_CPU", preferred_batch_sizes=(4, 8))
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    with pytest.raises(ValueError, match="unknown platform 'pytorch'"):
        encoder_config("m", "pytorch", spec, spec, 8)
    with pytest.raises(ValueError, match="max_batch_size and instances must be >= 1"):
        encoder_config("m", "tensorrt_plan", spec, spec, 0)
    with pytest.raises(ValueError, match="no Triton type for dtype 'complex64'"):
        encoder_config("m", "tensorrt_plan", [dict(spec[0], dtype="complex64")], spec, 8)


def test_python_models_batch_without_waiting_and_round_trip(tmp_path):
    """Queue delay 0: a lone request runs at once (the old 500 us were paid by every query at
    concurrency 1); None: no dynamic batching at all. Written, then read back equal."""
    spec = [{"name": "x", "dtype": "string", "shape": [-1, 1]}]
    config = python_config("m", spec, spec, 8, {"fingerprint": "ab12", "index_offset": 3})
    assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 0
    assert not python_config("m", spec, spec, 8, max_queue_delay_us=None).HasField("dynamic_batching")
    write_config(tmp_path / "m", config)
    assert read_config(tmp_path / "m") == config
    assert parameter(read_config(tmp_path / "m"), "index_offset") == "3"
    with pytest.raises(ValueError, match="model 'm' has no parameter 'threads'"):
        parameter(config, "threads")
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\nmax_batch: 8\n')
    with pytest.raises(ValueError, match=r"config.pbtxt: not a Triton model config \(.*max_batch"):
        read_config(tmp_path / "m")
