"""TensorRT: graph preparation (profiles), the CLI where TensorRT or a GPU is missing or the
TensorRT is not the container's, and the whole build on CPU through tests/export/trt_stub (TensorRT
10 and 11 bindings, engines run by ONNX Runtime): engines, their record, the timing cache, parity
and failures. Where TensorRT and CUDA are really present, the last test builds real engines."""
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from export import to_trt
from export.engines import CONTAINER, CONTAINER_TRT, RECORD, check_engines
from export.manifest import load_manifest
from export.to_trt import missing_requirements, profile_shapes
from export.trt_runner import TrtRunner
from trainer.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
STUB = Path(__file__).parent / "trt_stub" / "tensorrt.py"
MISSING = missing_requirements()
TRT10, TRT11 = CONTAINER_TRT, "11.1.0.6"  # the container's, and the next major's bindings


@pytest.fixture
def trt_stub(monkeypatch):
    """load(version, gpu=..., build="ok" | "none") -> the stub, importable as `tensorrt` in this test."""
    def load(version: str = TRT10, gpu: str = "Stub GPU", build: str = "ok"):
        monkeypatch.setenv("TBPS_TRT_STUB_VERSION", version)
        monkeypatch.setenv("TBPS_TRT_STUB_GPU", gpu)
        monkeypatch.setenv("TBPS_TRT_STUB_BUILD", build)
        spec = importlib.util.spec_from_file_location("tensorrt", STUB)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        return module
    return load


def copy_export(source: Path, out: Path) -> Path:
    """A copy of a session ONNX export where to_trt will find it (so it does not export again)."""
    shutil.copytree(source, out)
    return out


def build(ckpt, out, *args: str) -> int:
    """The CLI, on the CPU (the stub's engines run on host memory)."""
    return to_trt.main([str(ckpt), "--out", str(out), *args], device="cpu")


def assert_nothing_installed(out: Path):
    assert not (out / RECORD).exists() and not list(out.glob("*.plan")) and not (out / "model_repository").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_profile_shapes(exported):
    """The text encoder's profile spans both of its dynamic axes: batch, and tokens up to the context."""
    manifest = load_manifest(exported("esa"))
    shapes = profile_shapes(manifest, max_batch=32)
    assert shapes == {"text_encoder": {"input_ids": ((1, 1), (8, 32), (32, 77))},
                      "image_encoder": {"pixels": ((1, 3, 64, 32), (32, 3, 64, 32), (32, 3, 64, 32))}}
    assert profile_shapes(manifest, max_batch=4)["text_encoder"]["input_ids"][1] == (4, 32)
    old = json.loads(json.dumps(manifest))  # a version 1 export: its token axis is fixed at the context
    old["models"]["text_encoder"]["inputs"] = [{"name": "input_ids", "dtype": "int32", "shape": [-1, 77]}]
    assert profile_shapes(old, max_batch=32)["text_encoder"]["input_ids"] == ((1, 77), (8, 77), (32, 77))
    with pytest.raises(ValueError, match="max_batch must be >= 1, got 0"):
        profile_shapes(manifest, max_batch=0)


@pytest.mark.skipif(MISSING is None, reason="TensorRT and CUDA are present: the engine test covers the CLI")
def test_cli_without_tensorrt_writes_onnx_and_fails_with_one_line(method_checkpoints, tmp_path):
    out = tmp_path / "trt"
    run = subprocess.run([sys.executable, str(ROOT / "export" / "to_trt.py"), str(method_checkpoints["esa"]),
                          "--fp16", "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 2, run.stderr
    line = one_line(run.stderr)
    assert line.startswith(f"to_trt: ONNX encoders written to {out}, but no TensorRT engine")
    if "tensorrt" in MISSING:
        assert "the `tensorrt` Python package (pip install -e '.[trt]'" in line
    if not torch.cuda.is_available():
        assert "a CUDA GPU visible to torch" in line
    manifest = load_manifest(out)
    assert manifest["precision"] == "fp16"
    assert (out / "text_encoder.onnx").is_file() and (out / "image_encoder.onnx").is_file()
    assert not (out / "model_repository").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_with_tensorrt_but_no_gpu_the_cli_still_refuses(trt_stub, method_checkpoints, exported, tmp_path, capsys):
    """The CPU device is a test seam only: the CLI's default device still needs CUDA."""
    trt_stub()
    out = copy_export(exported("esa"), tmp_path / "trt")
    assert to_trt.main([str(method_checkpoints["esa"]), "--out", str(out)]) == 2
    line = one_line(capsys.readouterr().err)
    assert "a CUDA GPU visible to torch" in line and "tensorrt" not in line.split("missing", 1)[1]
    assert_nothing_installed(out)


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_build_installs_checked_engines_and_their_record(trt_stub, method_checkpoints, exported, tmp_path, capsys,
                                                         fp16):
    version = TRT10
    trt = trt_stub(version)
    out = copy_export(exported("esa", fp16), tmp_path / "trt")
    assert build(method_checkpoints["esa"], out, "--max-batch", "16", *(["--fp16"] if fp16 else [])) == 0
    stdout = capsys.readouterr().out
    assert f"wrote {out}/text_encoder.plan, image_encoder.plan, {RECORD}" in stdout
    ckpt = load_checkpoint(method_checkpoints["esa"])
    record = json.loads((out / RECORD).read_text())
    assert record["tensorrt"] == version and record["precision"] == ("fp16" if fp16 else "fp32")
    assert record["fingerprint"] == ckpt.fingerprint == load_manifest(out)["fingerprint"]
    assert set(record["gpu"]) == {"name", "compute_capability"}
    assert record["models"] == {"text_encoder": {"plan": "text_encoder.plan", "min_batch": 1, "opt_batch": 8,
                                                 "max_batch": 16,
                                                 "profile": {"input_ids": [[1, 1], [8, 32], [16, 77]]}},
                                "image_encoder": {"plan": "image_encoder.plan", "min_batch": 1, "opt_batch": 16,
                                                  "max_batch": 16,
                                                  "profile": {"pixels": [[1, 3, 64, 32], [16, 3, 64, 32],
                                                                         [16, 3, 64, 32]]}}}
    threshold = to_trt.PARITY[record["precision"]]
    assert all(record["parity"][name] >= threshold for name in record["models"])
    for name, model in record["models"].items():
        plan = (out / model["plan"]).read_bytes()
        header = trt.plan_header(plan)
        assert header["tensorrt"] == version and header["strongly_typed"] and header["flags"] == 1 << 1
        (profile,) = header["profiles"]
        (shapes,) = profile.values()
        assert [s[0] for s in shapes] == [model["min_batch"], model["opt_batch"], model["max_batch"]]
        assert list(profile.values()) == [list(map(list, s)) for s in model["profile"].values()]
        if name == "text_encoder":  # tokens too: 1 to the context, opt a caption's bucket
            assert [s[1] for s in shapes] == [1, 32, 77]
        assert (out / "model_repository" / name / "1" / "model.plan").read_bytes() == plan
    assert check_engines(out, ckpt.fingerprint) == record
    # the installed engine computes what torch computes, inside and at the edge of its profile
    runner = TrtRunner(out / "image_encoder.plan", "cpu")
    for batch in (1, 16):
        pixels = torch.randn(batch, 3, 64, 32)
        with torch.no_grad():
            want = ckpt.model.encode_image(pixels)
        got = runner(pixels=pixels)["image_sets"]
        assert torch.nn.functional.cosine_similarity(got, want, dim=-1).min() >= threshold
    with pytest.raises(ValueError, match="outside the engine's optimization profile"):
        runner(pixels=torch.randn(17, 3, 64, 32))
    # the text engine takes captions padded to their longest, up to the context, and gives torch's sets
    text = TrtRunner(out / "text_encoder.plan", "cpu")
    captions = ["a man in a red coat", "a woman with a black handbag and white shoes"]
    for ids in (ckpt.tokenizer(captions, longest=True), ckpt.tokenizer(captions, longest=True, multiple_of=16),
                ckpt.tokenizer(captions), ckpt.tokenizer(captions * 8, longest=True)):
        ids = torch.from_numpy(ids)
        with torch.no_grad():
            want = ckpt.model.encode_text(ids)
        got = text(input_ids=ids)["text_sets"]
        assert torch.nn.functional.cosine_similarity(got, want, dim=-1).min() >= threshold
    with pytest.raises(ValueError, match="outside the engine's optimization profile"):
        text(input_ids=torch.ones(2, 78, dtype=torch.int32))


@pytest.mark.parametrize("version", ["10.13.0.35", "10.8.0.40", TRT11])
def test_a_tensorrt_other_than_the_containers_builds_nothing(trt_stub, method_checkpoints, exported, tmp_path, capsys,
                                                            version):
    """Issue 25 fault 6: a plan loads only under the exact TensorRT that built it, so engines built
    by another release, even another patch of 10.8, would be refused by the container: the build
    is refused before it starts, and the previous install is left as it was."""
    trt_stub(TRT10)
    out = copy_export(exported("esa"), tmp_path / "trt")
    assert build(method_checkpoints["esa"], out, "--max-batch", "2") == 0
    installed = (out / RECORD).read_bytes()
    capsys.readouterr()
    trt_stub(version)
    assert build(method_checkpoints["esa"], out, "--max-batch", "2") == 2
    assert one_line(capsys.readouterr().err) == (
        f"to_trt: ONNX encoders written to {out}, but no TensorRT engine built: missing the TensorRT "
        f"{CONTAINER_TRT} of the Triton {CONTAINER} container (this machine has TensorRT {version}, whose "
        f"engines that container cannot load: pip install -e '.[trt]')")
    assert (out / RECORD).read_bytes() == installed
    check_engines(out, load_checkpoint(method_checkpoints["esa"]).fingerprint)


@pytest.mark.parametrize("version", [TRT10, TRT11], ids=["trt10", "trt11"])
def test_the_network_is_strongly_typed_under_tensorrt_10_and_11(trt_stub, exported, tmp_path, version):
    """STRONGLY_TYPED is bit 1 on TensorRT 10 and bit 0 (deprecated, always on) on 11: the same build
    serves the container's TensorRT and the next major's."""
    trt = trt_stub(version)
    shapes = profile_shapes(load_manifest(exported("esa")), 2)["image_encoder"]
    plan = to_trt.build_engine(exported("esa") / "image_encoder.onnx", tmp_path / "i.plan", shapes,
                               tmp_path / "timing.cache")
    header = trt.plan_header(plan.read_bytes())
    assert header["tensorrt"] == version and header["strongly_typed"]
    assert header["flags"] == (1 << 1 if version == TRT10 else 1 << 0)


def test_a_profile_that_does_not_fit_the_network_builds_nothing(trt_stub, exported, tmp_path):
    """The stub refuses what TensorRT refuses: a fixed axis given another size, a dynamic one left at 0."""
    trt_stub()
    manifest = load_manifest(exported("esa"))
    onnx_file = exported("esa") / "text_encoder.onnx"
    for shapes in ({"input_ids": ((1, 0), (8, 32), (16, 77))}, {"input_ids": ((1,), (8,), (16,))}):
        with pytest.raises(to_trt.BuildError, match="could not build an engine"):
            to_trt.build_engine(onnx_file, tmp_path / "t.plan", shapes, tmp_path / "timing.cache")
    pixels = profile_shapes(manifest, 4)["image_encoder"]["pixels"]
    with pytest.raises(to_trt.BuildError, match="could not build an engine"):
        to_trt.build_engine(exported("esa") / "image_encoder.onnx", tmp_path / "i.plan",
                            {"pixels": tuple((b, 3, 64, 31) for b, *_ in pixels)}, tmp_path / "timing.cache")
    assert to_trt.build_engine(onnx_file, tmp_path / "t.plan", profile_shapes(manifest, 4)["text_encoder"],
                               tmp_path / "timing.cache").is_file()


def test_a_version_1_export_is_exported_again(trt_stub, method_checkpoints, exported, tmp_path, capsys):
    """An export with a fixed 77-token axis (version 1) is replaced before the build: engines get the token profile."""
    trt_stub()
    out = copy_export(exported("esa"), tmp_path / "trt")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["version"] = 1
    manifest["models"]["text_encoder"]["inputs"] = [{"name": "input_ids", "dtype": "int32", "shape": [-1, 77]}]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert build(method_checkpoints["esa"], out, "--max-batch", "2") == 0
    assert load_manifest(out)["version"] == 2
    assert json.loads((out / RECORD).read_text())["models"]["text_encoder"]["profile"]["input_ids"][2] == [2, 77]


def test_a_plan_loads_only_under_the_tensorrt_that_built_it(trt_stub, method_checkpoints, exported, tmp_path):
    """Why the record names the TensorRT version: a runtime of another version cannot deserialize the plan."""
    trt_stub(TRT10)
    out = copy_export(exported("esa"), tmp_path / "trt")
    assert build(method_checkpoints["esa"], out, "--max-batch", "2") == 0
    trt_stub("10.9.0.34")
    with pytest.raises(RuntimeError, match="could not deserialize the engine"):
        TrtRunner(out / "text_encoder.plan", "cpu")


def test_a_run_directory_gets_its_engines_where_the_readme_says(trt_stub, tiny_run, exported, tmp_path, capsys):
    """Fault 3: `to_trt.py RUN --fp16` writes RUN/trt-fp16 (the README's --engines folder), not RUN/best/trt-fp16."""
    trt_stub()
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert to_trt.main([str(run), "--fp16", "--max-batch", "2"], device="cpu") == 0
    assert f"wrote {run / 'trt-fp16'}/text_encoder.plan" in capsys.readouterr().out
    check_engines(run / "trt-fp16", load_checkpoint(run).fingerprint)
    assert not (run / "best" / "trt-fp16").exists()


@pytest.mark.parametrize("cache", ["another GPU", "not a cache"])
def test_a_foreign_timing_cache_is_replaced_by_a_fresh_one(trt_stub, method_checkpoints, exported, tmp_path, capsys,
                                                           cache):
    """Fault 6: set_timing_cache refuses the file; the build starts a fresh cache and writes it back."""
    foreign = trt_stub(gpu="Another GPU")
    config = foreign.Builder(foreign.Logger()).create_builder_config()
    timing = tmp_path / "timing.cache"
    timing.write_bytes(bytes(config.create_timing_cache(b"").serialize()) if cache == "another GPU" else b"junk")
    trt = trt_stub()
    out = copy_export(exported("esa"), tmp_path / "trt")
    assert build(method_checkpoints["esa"], out, "--max-batch", "2", "--timing-cache", str(timing)) == 0
    assert f"{timing} is of another GPU or TensorRT version: starting a fresh one" in capsys.readouterr().out
    check_engines(out, load_checkpoint(method_checkpoints["esa"]).fingerprint)
    config = trt.Builder(trt.Logger()).create_builder_config()
    mine = config.create_timing_cache(timing.read_bytes())
    assert config.set_timing_cache(mine, ignore_mismatch=False)  # now this GPU's, holding both builds' timings
    assert len(mine.entries) == 2


def perturb_weights(onnx_file: Path, how: str) -> None:
    """Noise (or NaN) in the graph's largest weight: an engine that no longer computes the checkpoint's model."""
    model = onnx.load(str(onnx_file))
    weight = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    value = numpy_helper.to_array(weight)
    if how == "noise":
        value = value + np.random.default_rng(0).normal(0, float(value.std()), value.shape).astype(value.dtype)
    else:
        value = np.full_like(value, np.nan)
    weight.CopyFrom(numpy_helper.from_array(value, weight.name))
    onnx.save(model, str(onnx_file))


@pytest.mark.parametrize("how", ["noise", "nan"])
def test_parity_failure_installs_nothing(trt_stub, method_checkpoints, exported, tmp_path, capsys, how):
    """Fault 7: an engine below the parity threshold (NaN outputs included) fails the build, and the
    previous install is withdrawn."""
    trt_stub()
    ckpt = method_checkpoints["esa"]
    out = copy_export(exported("esa"), tmp_path / "trt")
    assert build(ckpt, out, "--max-batch", "2") == 0
    perturb_weights(out / "text_encoder.onnx", how)
    capsys.readouterr()
    assert build(ckpt, out, "--max-batch", "2") == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("to_trt: text_encoder: TensorRT engine against torch fp32: lowest cosine "
                           + ("-1.000000," if how == "nan" else ""))
    assert f"below {to_trt.PARITY['fp32']} (fp32): nothing installed in {out}" in line
    assert_nothing_installed(out)
    with pytest.raises(ValueError, match=f"no {RECORD} in"):
        check_engines(out, load_checkpoint(ckpt).fingerprint)


@pytest.mark.parametrize("fault", ["no engine", "parser"])
def test_tensorrt_failures_are_one_line_and_install_nothing(trt_stub, method_checkpoints, exported, tmp_path, capsys,
                                                            fault):
    trt_stub(build="none" if fault == "no engine" else "ok")
    out = copy_export(exported("esa"), tmp_path / "trt")
    if fault == "parser":  # the image encoder fails after the text encoder was built and checked
        (out / "image_encoder.onnx").write_bytes(b"not an onnx graph\n\nat all")
    assert build(method_checkpoints["esa"], out, "--max-batch", "2") == 1
    line = one_line(capsys.readouterr().err)
    if fault == "no engine":
        assert line == (f"to_trt: {out / 'text_encoder.onnx'}: TensorRT could not build an engine "
                        f"(build_serialized_network returned None; TensorRT's log above says why)")
    else:
        assert line.startswith(f"to_trt: {out / 'image_encoder.onnx'}: TensorRT's ONNX parser failed: ")
    assert_nothing_installed(out)


@pytest.mark.skipif(MISSING is not None, reason=f"no engine build on this machine: missing {MISSING}")
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_engine_build_profiles_and_parity(method_checkpoints, tmp_path, fp16):
    out = tmp_path / "trt"
    assert to_trt.build_trt(method_checkpoints["esa"], out, fp16=fp16, max_batch=4) == out
    assert (out / "model_repository" / "text_encoder" / "1" / "model.plan").is_file()
    assert (out / "timing.cache").stat().st_size > 0
    ckpt = load_checkpoint(method_checkpoints["esa"], "cuda")
    record = check_engines(out, ckpt.fingerprint)  # built only under the container's TensorRT
    assert record["gpu"]["name"] == torch.cuda.get_device_name()
    runner = TrtRunner(out / "image_encoder.plan")
    for batch in (1, 3, 4):
        pixels = torch.randn(batch, 3, 64, 32, device="cuda")
        got = runner(pixels=pixels)["image_sets"]
        with torch.no_grad():
            want = ckpt.model.encode_image(pixels)
        cosine = torch.nn.functional.cosine_similarity(got.float(), want, dim=-1)
        assert got.dtype == torch.float32 and cosine.min() >= (0.999 if fp16 else 0.99999)
    with pytest.raises(ValueError, match="outside the engine's optimization profile"):
        runner(pixels=torch.randn(5, 3, 64, 32, device="cuda"))
    text = TrtRunner(out / "text_encoder.plan")
    for ids in (ckpt.tokenizer(["a man in a red coat"] * 2), ckpt.tokenizer(["a man in a red coat", "bag"], longest=True)):
        ids = torch.from_numpy(ids).cuda()  # the full context, and padded to the longest caption
        got = text(input_ids=ids)["text_sets"]
        with torch.no_grad():
            want = ckpt.model.encode_text(ids)
        assert torch.nn.functional.cosine_similarity(got, want, dim=-1).min() >= (0.999 if fp16 else 0.99999)
