"""Repository layout and configs for both profiles (no server needed): every config.pbtxt parsed
with protobuf's text format and the ensemble cross-checked against the models it chains."""
import json
import shutil
import subprocess
import sys

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.engines import CONTAINER, CONTAINER_TRT
from export.gallery import GalleryError, load_gallery, save_gallery
from export.triton_config import ENSEMBLE, read_config, write_config
from serving.live_store import GALLERY_FILE
from serving.repository import publish_gallery, write_repository

MODELS = ["gallery_erase", "gallery_ingest", "gallery_search", "image_decoder", "image_encoder", "image_search",
          "person_search", "text_encoder", "tokenizer"]
STEPS = {"portable": ["text_encoder", "gallery_search"],  # its text encoder tokenizes: one python hop less
         "production": ["tokenizer", "text_encoder", "gallery_search"]}


def ensemble_problems(repo, name: str = ENSEMBLE) -> list[str]:
    """What Triton would refuse, or serve wrongly, in an ensemble: a step's batch below the
    ensemble's, a required input not fed, an input fed a tensor of another type or shape or
    one the model does not have, an output not made, a name both an input and an output."""
    configs = {p.parent.name: read_config(p.parent) for p in repo.glob("*/config.pbtxt")}
    ensemble = configs[name]

    def io(tensors):
        return {t.name: (mc.DataType.Name(t.data_type), list(t.dims)) for t in tensors}
    made, problems = io(ensemble.input), []
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        inputs, outputs = io(model.input), io(model.output)
        if model.max_batch_size < ensemble.max_batch_size:
            problems.append(f"{model.name}: max_batch_size {model.max_batch_size} < the ensemble's "
                            f"{ensemble.max_batch_size}")
        required = {t.name for t in model.input if not t.optional}
        if not required <= set(step.input_map) <= set(inputs):
            problems.append(f"{model.name}: inputs {sorted(inputs)} (required {sorted(required)}) mapped as "
                            f"{sorted(step.input_map)}")
        for name, tensor in step.input_map.items():
            if tensor not in made:
                problems.append(f"{model.name}.{name}: {tensor} is not made before this step")
            elif name in inputs and made[tensor] != inputs[name]:
                problems.append(f"{model.name}.{name} {inputs[name]} is fed {tensor} {made[tensor]}")
        for name, tensor in step.output_map.items():
            if name not in outputs:
                problems.append(f"{model.name} has no output {name}")
            else:
                made[tensor] = outputs[name]
    for tensor, spec in io(ensemble.output).items():
        if made.get(tensor) != spec:
            problems.append(f"ensemble output {tensor} {spec} is made as {made.get(tensor)}")
    clash = set(io(ensemble.input)) & set(io(ensemble.output))
    if clash:
        problems.append(f"{name}: {sorted(clash)} both an input and an output")
    return problems


@pytest.fixture(scope="module")
def production(esa_export, gallery, engines, tmp_path_factory):
    root = tmp_path_factory.mktemp("production")
    return {"onnx": write_repository(esa_export, gallery, root / "onnx", profile="production"),
            "trt": write_repository(esa_export, gallery, root / "trt", profile="production", engines=engines)}


def test_every_config_parses_and_the_ensemble_fits_its_steps(repository, production):
    repos = {"portable": repository, **production}
    for profile, repo in repos.items():
        steps = STEPS["portable" if profile == "portable" else "production"]
        models = sorted(set(MODELS) - ({"tokenizer"} if profile == "portable" else set()))
        assert sorted(p.name for p in repo.iterdir()) == models, profile
        configs = {name: read_config(repo / name) for name in models}
        assert all(c.name == name for name, c in configs.items())
        for ensemble, ensemble_steps in ((ENSEMBLE, steps),
                                         ("image_search", ["image_decoder", "image_encoder", "gallery_search"])):
            assert ensemble_problems(repo, ensemble) == [], (profile, ensemble)
            assert [s.model_name for s in configs[ensemble].ensemble_scheduling.step] == ensemble_steps
            assert configs[ensemble].max_batch_size == min(configs[s].max_batch_size for s in ensemble_steps)
        assert configs["gallery_ingest"].instance_group[0].count == 1  # the live gallery's one adder
        assert (repo / "gallery_search" / "1" / "live" / "live.sqlite").is_file()
    portable = {name: read_config(repository / name) for name in MODELS
                if name not in (ENSEMBLE, "image_search", "tokenizer")}
    assert {c.backend for c in portable.values()} == {"python"}
    assert {c.max_batch_size for c in portable.values()} == {8, 0}  # the fixture's; gallery_erase does not batch
    assert portable["text_encoder"].instance_group[0].count == 2
    assert {c.parameters["threads"].string_value for c in portable.values() if "encoder" in c.name} == {"1"}
    assert (repository / "text_encoder" / "1" / "model.onnx").is_file()
    assert "import TritonPythonModel" in (repository / "text_encoder" / "1" / "model.py").read_text()
    assert (repository / "text_encoder" / "1" / "tokenizer.txt.gz").is_file()
    gpu = mc.ModelInstanceGroup.KIND_GPU
    for kind, platform, file in (("onnx", "onnxruntime_onnx", "model.onnx"), ("trt", "tensorrt_plan", "model.plan")):
        for name in ("text_encoder", "image_encoder"):
            config = read_config(production[kind] / name)
            assert config.platform == platform and config.instance_group[0].kind == gpu
            assert (production[kind] / name / "1" / file).is_file()
        assert read_config(production[kind] / "gallery_search").instance_group[0].kind == gpu


def test_captions_are_padded_to_their_longest_and_still_batch(repository, production):
    """The text encoder's token axis is dynamic (dims -1). Portable: the python text encoder takes
    TEXT, pads a request to its longest caption and a batch to its longest request. Production:
    Triton's backends batch equal shapes only, so the tokenizer rounds lengths up to buckets of 16."""
    encoder = read_config(repository / "text_encoder")
    assert [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in encoder.input] == [("TEXT", "TYPE_STRING",
                                                                                               [1])]
    assert {k: v.string_value for k, v in encoder.parameters.items()} == {"pad": "longest", "multiple_of": "1",
                                                                          "threads": "1"}
    for repo in (production["onnx"], production["trt"]):
        tokenizer, encoder = read_config(repo / "tokenizer"), read_config(repo / "text_encoder")
        assert [(t.name, list(t.dims)) for t in tokenizer.output] == [("input_ids", [-1])]
        assert [(t.name, list(t.dims)) for t in encoder.input] == [("input_ids", [-1])]
        assert {k: v.string_value for k, v in tokenizer.parameters.items()} == {"pad": "longest", "multiple_of": "16"}
        assert ensemble_problems(repo) == []


def test_a_version_1_export_is_still_served_at_the_full_context(esa_export, gallery, tmp_path):
    """An export with a fixed 77-token text encoder (manifest version 1) is padded to the context,
    by the portable text encoder itself or by the production tokenizer (dims 77)."""
    old = shutil.copytree(esa_export, tmp_path / "v1")
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["version"] = 1
    manifest["models"]["text_encoder"]["inputs"] = [{"name": "input_ids", "dtype": "int32", "shape": [-1, 77]}]
    (old / "manifest.json").write_text(json.dumps(manifest))
    repo = write_repository(old, gallery, tmp_path / "repo")
    assert read_config(repo / "text_encoder").parameters["pad"].string_value == "context"
    assert ensemble_problems(repo) == []
    repo = write_repository(old, gallery, tmp_path / "production", profile="production")
    tokenizer, encoder = read_config(repo / "tokenizer"), read_config(repo / "text_encoder")
    assert list(tokenizer.output[0].dims) == list(encoder.input[0].dims) == [77]
    assert tokenizer.parameters["pad"].string_value == "context"
    assert ensemble_problems(repo) == []


def test_engines_of_a_fixed_token_count_are_refused(esa_export, gallery, engines, tmp_path):
    """Engines built before the token axis was dynamic (a 77-token profile) cannot take the tokenizer's lengths."""
    record = json.loads((engines / "engines.json").read_text())
    text = dict(record["models"]["text_encoder"], profile={"input_ids": [[1, 77], [8, 77], [32, 77]]})
    folder = edit_record(engines, tmp_path, models=dict(record["models"], text_encoder=text))
    with pytest.raises(ValueError, match=r"profile \(tokens 77..77\) does not take captions of 16 to 77 tokens"):
        write_repository(esa_export, gallery, tmp_path / "repo", profile="production", engines=folder)
    del text["profile"]
    folder = edit_record(engines, tmp_path / "b", models=dict(record["models"], text_encoder=text))
    with pytest.raises(ValueError, match=r"profile \(a fixed token count\) .* rebuild the engines"):
        write_repository(esa_export, gallery, tmp_path / "repo", profile="production", engines=folder)
    assert not (tmp_path / "repo").exists()


def test_the_cross_check_finds_a_broken_ensemble(repository, tmp_path):
    """The check above can fail: a gallery_search expecting sets of another shape, a smaller batch."""
    repo = shutil.copytree(repository, tmp_path / "repo")
    config = read_config(repo / "gallery_search")
    config.input[0].dims[0] += 1
    config.max_batch_size = 4
    write_config(repo / "gallery_search", config)
    problems = ensemble_problems(repo)
    assert len(problems) == 2 and "max_batch_size 4 < the ensemble's 8" in problems[0]
    assert "gallery_search.text_sets ('TYPE_FP32', [6, 128]) is fed sets ('TYPE_FP32', [5, 128])" in problems[1]


def test_engines_set_every_batch_size(esa_export, gallery, engines, production, tmp_path):
    """The engines' profiles (text 32, image 16) are the encoders' max_batch_size; the python
    models and the ensembles take the text engine's (the image decoder and image_search the
    image engine's), or a smaller --max-batch; ingest encodes in chunks the image engine takes."""
    def batches(repo):
        return {name: read_config(repo / name).max_batch_size for name in MODELS}
    live = {"gallery_erase": 0, "image_decoder": 16, "image_search": 16}  # image queries: the image engine's 16
    assert batches(production["trt"]) == {"text_encoder": 32, "image_encoder": 16, "tokenizer": 32,
                                          "gallery_search": 32, "person_search": 32, "gallery_ingest": 32, **live}
    assert (production["trt"] / "text_encoder" / "1" / "model.plan").read_bytes() == b"a serialized engine"
    smaller = write_repository(esa_export, gallery, tmp_path / "16", profile="production", engines=engines,
                               max_batch_size=16)
    assert batches(smaller) == {"text_encoder": 32, "image_encoder": 16, "tokenizer": 16, "gallery_search": 16,
                                "person_search": 16, "gallery_ingest": 16, **live}
    with pytest.raises(ValueError, match="--max-batch 64 exceeds the engines' max batch 32"):
        write_repository(esa_export, gallery, tmp_path / "64", profile="production", engines=engines,
                         max_batch_size=64)
    assert not (tmp_path / "64").exists()


def edit_record(engines, tmp_path, **changes):
    folder = shutil.copytree(engines, tmp_path / "engines")
    record = json.loads((folder / "engines.json").read_text())
    (folder / "engines.json").write_text(json.dumps(dict(record, **changes)))
    return folder


@pytest.mark.parametrize("case,message", [
    ("no record", "no engines.json in .*: not a checked engine build"),
    ("other checkpoint", "engines built from checkpoint 0000000000000000, expected checkpoint"),
    ("TensorRT 11", f"engines built by TensorRT 11.0.0.12 do not load in the Triton {CONTAINER} container, "
                    f"whose TensorRT is {CONTAINER_TRT} "),
    ("TensorRT 10.13", f"engines built by TensorRT 10.13.0.35 do not load in the Triton {CONTAINER} container"),
    ("another patch", f"engines built by TensorRT 10.8.0.40 do not load in the Triton {CONTAINER} container"),
    ("empty plan", "text_encoder engine .*text_encoder.plan is empty"),
])
def test_engines_that_cannot_serve_this_checkpoint_are_refused(esa_export, gallery, engines, tmp_path, case,
                                                               message):
    folder = {"no record": lambda: shutil.copytree(engines, tmp_path / "engines",
                                                   ignore=shutil.ignore_patterns("engines.json")),
              "other checkpoint": lambda: edit_record(engines, tmp_path, fingerprint="0" * 16),
              "TensorRT 11": lambda: edit_record(engines, tmp_path, tensorrt="11.0.0.12"),
              "TensorRT 10.13": lambda: edit_record(engines, tmp_path, tensorrt="10.13.0.35"),
              "another patch": lambda: edit_record(engines, tmp_path, tensorrt="10.8.0.40"),
              "empty plan": lambda: edit_record(engines, tmp_path)}[case]()
    if case == "empty plan":
        (folder / "text_encoder.plan").write_bytes(b"")
    with pytest.raises(ValueError, match=message):
        write_repository(esa_export, gallery, tmp_path / "repo", profile="production", engines=folder)
    assert not (tmp_path / "repo").exists()  # nothing written


@pytest.mark.slow
def test_tbps_repo_refuses_foreign_engines_in_one_line(esa_export, gallery, engines, tmp_path):
    folder = edit_record(engines, tmp_path, fingerprint="0" * 16)
    done = subprocess.run([sys.executable, "-m", "serving.cli", "repo", str(esa_export), str(gallery), "--profile",
                           "production", "--engines", str(folder), "--out", str(tmp_path / "repo")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and "expected checkpoint" in done.stderr, done.stderr
    assert not (tmp_path / "repo").exists()


def test_the_served_fingerprint_is_parsed_not_split(esa_export, gallery, tmp_path):
    """Any valid text format of the config (here one line, as Triton's tools may write it)
    names the checkpoint: another checkpoint's gallery is still refused before any change."""
    repo = write_repository(esa_export, gallery, tmp_path / "repo")
    config = read_config(repo / "gallery_search")
    (repo / "gallery_search" / "config.pbtxt").write_text(text_format.MessageToString(config, as_one_line=True))
    g = load_gallery(gallery)
    other = save_gallery(tmp_path / "other.safetensors", g.sets, g.ids, g.paths, "0" * 16, g.alpha, g.weight)
    with pytest.raises(GalleryError, match=f"built by checkpoint 0000000000000000.*{g.fingerprint}"):
        publish_gallery(repo, other, "127.0.0.1:1")  # refused before any server is contacted
    assert sorted(p.name for p in (repo / "gallery_search").iterdir()) == ["1", "config.pbtxt"]


def test_bad_profile_used_folder_and_foreign_gallery_are_refused(esa_export, gallery, engines, tmp_path):
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        write_repository(esa_export, gallery, tmp_path / "a", profile="fast")
    with pytest.raises(ValueError, match="engines are served by the production profile"):
        write_repository(esa_export, gallery, tmp_path / "a", engines=engines)
    g = load_gallery(gallery)
    other = save_gallery(tmp_path / "other.safetensors", g.sets, g.ids, g.paths, "f" * 16, g.alpha, g.weight)
    with pytest.raises(GalleryError, match="rebuild the gallery"):
        write_repository(esa_export, other, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing half-written


def test_local_shards_put_one_slice_on_each_gpu_behind_a_cpu_merge(esa_export, gallery, engines, tmp_path):
    from serving.shards import LOCAL_ADDED_RANGE
    repo = write_repository(esa_export, gallery, tmp_path / "repo", profile="production", engines=engines,
                            local_shards=3)
    assert sorted(p.name for p in repo.iterdir()) == sorted(MODELS + [f"gallery_search_{i}" for i in range(3)])
    n, offsets = len(load_gallery(gallery, with_sets=False)), []
    for i in range(3):
        config = read_config(repo / f"gallery_search_{i}")
        group = config.instance_group[0]
        assert group.kind == mc.ModelInstanceGroup.KIND_GPU and list(group.gpus) == [i]
        assert config.parameters["added_offset"].string_value == str(n + i * LOCAL_ADDED_RANGE)
        offsets.append(int(config.parameters["index_offset"].string_value))
        assert "QUERY_SETS" in [t.name for t in config.output]
    sizes = [len(load_gallery(repo / f"gallery_search_{i}" / "1" / GALLERY_FILE, with_sets=False)) for i in range(3)]
    assert offsets == [0, sizes[0], sizes[0] + sizes[1]] and sum(sizes) == n
    merge = read_config(repo / "gallery_search")
    assert merge.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU and merge.backend == "python"
    assert json.loads(merge.parameters["shards"].string_value) == [f"gallery_search_{i}" for i in range(3)]
    assert not (repo / "gallery_search" / "1" / GALLERY_FILE).exists()  # the merge holds no gallery
    for ensemble in (ENSEMBLE, "image_search"):
        assert ensemble_problems(repo, ensemble) == []
    for follower in ("gallery_ingest", "gallery_erase"):
        stores = json.loads(read_config(repo / follower).parameters["stores"].string_value)
        assert [s["gallery_model"] for s in stores] == [f"gallery_search_{i}" for i in range(3)]
    for bad in (0, 65, 1.5, True):
        with pytest.raises(ValueError, match="local shards must be a whole number from 1 to 64"):
            write_repository(esa_export, gallery, tmp_path / f"bad{bad}", local_shards=bad)
