"""TensorRT: graph preparation without TensorRT (profiles, fp16 ONNX written by the CLI), the
CLI's failure where TensorRT or CUDA is missing, and the engine build where both are present."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from export.manifest import load_manifest
from export.to_trt import missing_requirements, profile_shapes

ROOT = Path(__file__).resolve().parents[2]
MISSING = missing_requirements()


def test_profile_shapes(exported):
    manifest = load_manifest(exported("esa"))
    shapes = profile_shapes(manifest, max_batch=32)
    assert shapes == {"text_encoder": {"input_ids": ((1, 77), (8, 77), (32, 77))},
                      "image_encoder": {"pixels": ((1, 3, 64, 32), (32, 3, 64, 32), (32, 3, 64, 32))}}
    assert profile_shapes(manifest, max_batch=4)["text_encoder"]["input_ids"][1] == (4, 77)
    with pytest.raises(ValueError, match="max_batch must be >= 1, got 0"):
        profile_shapes(manifest, max_batch=0)


@pytest.mark.skipif(MISSING is None, reason="TensorRT and CUDA are present: the engine test covers the CLI")
def test_cli_without_tensorrt_writes_onnx_and_fails_with_one_line(method_checkpoints, tmp_path):
    out = tmp_path / "trt"
    run = subprocess.run([sys.executable, str(ROOT / "export" / "to_trt.py"), str(method_checkpoints["esa"]),
                          "--fp16", "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"to_trt: ONNX encoders written to {out}, but no TensorRT engine")
    if "tensorrt" in MISSING:
        assert "the `tensorrt` Python package (pip install 'tensorrt>=10'" in lines[0]
    if not torch.cuda.is_available():
        assert "a CUDA GPU visible to torch" in lines[0]
    manifest = load_manifest(out)
    assert manifest["precision"] == "fp16"
    assert (out / "text_encoder.onnx").is_file() and (out / "image_encoder.onnx").is_file()
    assert not (out / "model_repository").exists()


@pytest.mark.skipif(MISSING is not None, reason=f"no engine build on this machine: missing {MISSING}")
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_engine_build_profiles_and_parity(method_checkpoints, tmp_path, fp16):
    from export.to_trt import build_trt
    from export.trt_runner import TrtRunner
    from trainer.checkpoint import load_checkpoint
    out = tmp_path / "trt"
    repo = build_trt(method_checkpoints["esa"], out, fp16=fp16, max_batch=4)
    assert (repo / "text_encoder" / "1" / "model.plan").is_file() and (out / "timing.cache").stat().st_size > 0
    ckpt = load_checkpoint(method_checkpoints["esa"], "cuda")
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
    ids = torch.from_numpy(ckpt.tokenizer(["a man in a red coat"] * 2)).cuda()
    got = TrtRunner(out / "text_encoder.plan")(input_ids=ids)["text_sets"]
    with torch.no_grad():
        want = ckpt.model.encode_text(ids)
    assert torch.nn.functional.cosine_similarity(got, want, dim=-1).min() >= (0.999 if fp16 else 0.99999)
