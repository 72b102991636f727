"""A tiny ESA checkpoint, its ONNX export and gallery, a portable model repository and a real
local Triton server answering gRPC, built once per session (a server starts in ~5 s)."""
import pytest

from tests.conftest import TEST_RECIPE

# the session server's batch limit: below the 12 captions, so every multi-text query is split
MAX_BATCH = 8


@pytest.fixture(scope="session")
def esa_run(synthetic_data, tmp_path_factory):
    from trainer.fit import TrainConfig, train
    out = tmp_path_factory.mktemp("esa") / "run"
    train(TrainConfig(data=str(synthetic_data), out=str(out), epochs=1, **dict(TEST_RECIPE, method="esa")))
    return out


@pytest.fixture(scope="session")
def esa_export(esa_run, tmp_path_factory):
    from export.to_onnx import export_onnx
    return export_onnx(esa_run, tmp_path_factory.mktemp("esa-onnx")).parent


@pytest.fixture(scope="session")
def gallery(esa_run, synthetic_data, tmp_path_factory):
    """The test split's images, with the adaptive margin (so the margin path is served too)."""
    from export.build_gallery import build_gallery
    return build_gallery(esa_run, tmp_path_factory.mktemp("gallery") / "test.safetensors", data=synthetic_data,
                         split="test", margin_bank="train", margin_beta=0.5, progress=False)


@pytest.fixture(scope="session")
def repository(esa_export, gallery, tmp_path_factory):
    from serving.repository import write_repository
    return write_repository(esa_export, gallery, tmp_path_factory.mktemp("repo") / "repo", max_batch_size=MAX_BATCH)


@pytest.fixture(scope="session")
def server(repository):
    from serving.launch import TritonServer
    with TritonServer(repository) as running:
        yield running


@pytest.fixture(scope="session")
def captions(synthetic_data):
    from trainer.data.formats import load_dataset
    return [c for e in load_dataset(synthetic_data).test for c in e.captions][:12]


@pytest.fixture(scope="session")
def engines(esa_export, tmp_path_factory):
    """A to_trt.py output folder as tbps repo reads it: engines.json and non-empty plans (no
    TensorRT here; the repository never opens a plan). Text engine batch 1..32 and tokens
    1..77, image batch 1..16: the profiles export/to_trt.py writes."""
    from export.engines import write_record
    from export.manifest import load_manifest
    from export.to_trt import profile_batches, profile_shapes
    folder = tmp_path_factory.mktemp("engines")
    manifest = load_manifest(esa_export)
    batches = {"text_encoder": 32, "image_encoder": 16}
    for name in batches:
        (folder / f"{name}.plan").write_bytes(b"a serialized engine")

    def model(name, b):
        low, opt, high = profile_batches(b)[name]
        ends = profile_shapes(manifest, b)[name]
        return {"plan": f"{name}.plan", "min_batch": low, "opt_batch": opt, "max_batch": high,
                "profile": {i: [list(s) for s in shapes] for i, shapes in ends.items()}}
    write_record(folder, {"fingerprint": manifest["fingerprint"], "precision": "fp16",
                          "tensorrt": "10.8.0.43", "gpu": {"name": "NVIDIA H100", "compute_capability": "9.0"},
                          "models": {name: model(name, b) for name, b in batches.items()}})
    return folder
