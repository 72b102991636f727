"""Building galleries: torch and ONNX backends against the model, resuming a killed build,
the adaptive margin, a plain folder of images through the CLI, and clear refusals."""
import pytest
import torch
from PIL import Image

from export.build_gallery import build_gallery, main
from export.gallery import load_gallery
from kernels.quantize import dequantize_sets, quantize_sets
from trainer.checkpoint import load_checkpoint
from trainer.data.formats import load_dataset
from trainer.data.transforms import build_transform, load_image
from trainer.evaluate import adaptive_margin, encode_captions


def _kill(chunk: int, chunks: int):
    raise KeyboardInterrupt  # what Ctrl-C or a kill looks like to the build, right after a chunk is saved


@pytest.fixture(scope="module")
def torch_gallery(tiny_run, synthetic_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("gallery") / "test.safetensors"
    return build_gallery(tiny_run, out, data=synthetic_data, split="test", batch_size=4, progress=False)


def test_torch_gallery_is_the_models_encoding(tiny_run, synthetic_data, torch_gallery):
    ckpt = load_checkpoint(tiny_run)
    entries = load_dataset(synthetic_data).test
    g = load_gallery(torch_gallery, fingerprint=ckpt.fingerprint)
    transform = build_transform(ckpt.image_size, train=False)
    with torch.no_grad():
        want = ckpt.model.encode_image(torch.stack([transform(load_image(e.path)) for e in entries]))
    assert g.sets.shape == want.shape and g.sets.dtype == torch.float16
    torch.testing.assert_close(g.sets.float(), want, atol=1e-3, rtol=0)
    assert g.ids.tolist() == [e.pid for e in entries]
    assert all((synthetic_data / p).resolve() == e.path for p, e in zip(g.paths, entries))
    assert g.margin is None and (g.alpha, g.weight) == (16.0, 0.0)


def test_onnx_backend_matches_torch(tiny_run, synthetic_data, torch_gallery, tmp_path):
    out = build_gallery(tiny_run, tmp_path / "onnx.safetensors", data=synthetic_data, backend="onnx",
                        batch_size=5, progress=False)
    a, b = load_gallery(torch_gallery), load_gallery(out)
    torch.testing.assert_close(b.sets.float(), a.sets.float(), atol=2e-3, rtol=0)
    assert b.paths == a.paths and torch.equal(b.ids, a.ids)
    assert not (tmp_path / "onnx.safetensors.parts").exists()


def test_killed_build_resumes_and_equals_an_uninterrupted_one(tiny_run, synthetic_data, torch_gallery, tmp_path):
    out = tmp_path / "g.safetensors"
    parts = tmp_path / "g.safetensors.parts"
    with pytest.raises(KeyboardInterrupt):
        build_gallery(tiny_run, out, data=synthetic_data, chunk_size=3, batch_size=2, progress=False, on_chunk=_kill)
    assert not out.exists() and sorted(p.name for p in parts.iterdir()) == ["chunk_000000.safetensors", "plan.json"]
    resumed = []
    build_gallery(tiny_run, out, data=synthetic_data, chunk_size=3, batch_size=2, progress=False,
                  on_chunk=lambda i, n: resumed.append(i))
    n_chunks = -(-len(load_dataset(synthetic_data).test) // 3)
    assert resumed == list(range(1, n_chunks)) and n_chunks > 1  # chunk 0 was not encoded again
    assert not parts.exists()
    a, b = load_gallery(out), load_gallery(torch_gallery)
    assert torch.equal(a.sets, b.sets) and torch.equal(a.ids, b.ids) and a.paths == b.paths


def test_stale_sidecar_is_discarded(tiny_run, synthetic_data, tmp_path, capsys):
    out = tmp_path / "g.safetensors"
    with pytest.raises(KeyboardInterrupt):
        build_gallery(tiny_run, out, data=synthetic_data, chunk_size=3, progress=False, on_chunk=_kill)
    calls = []
    build_gallery(tiny_run, out, data=synthetic_data, chunk_size=4, progress=False,
                  on_chunk=lambda i, n: calls.append(i))
    assert calls[0] == 0  # another chunk size: nothing reused
    assert "discarding" in capsys.readouterr().err


def test_adaptive_margin(tiny_run, synthetic_data, tmp_path):
    out = build_gallery(tiny_run, tmp_path / "m.safetensors", data=synthetic_data, margin_bank="train",
                        margin_beta=0.5, progress=False)
    g = load_gallery(out)
    ckpt = load_checkpoint(tiny_run)
    captions = [c for e in load_dataset(synthetic_data).train for c in e.captions]
    bank = encode_captions(ckpt.model, ckpt.tokenizer, captions)
    want = adaptive_margin(bank, g.sets.float(), ckpt.model.score, beta=0.5)
    assert g.margin.shape == (len(g),) and torch.allclose(g.margin, want, atol=1e-6)
    assert g.margin.min() > 0


def test_an_8bit_gallery_via_cli_quantizes_the_fp16_sets_and_scores_its_margin_on_them(tiny_run, synthetic_data,
                                                                                        torch_gallery, tmp_path):
    out = tmp_path / "g8"
    main([str(tiny_run), "--data", str(synthetic_data), "--out", str(out), "--set-dtype", "int8",
          "--margin-bank", "train", "--batch-size", "4"])
    g8, g16 = load_gallery(out), load_gallery(torch_gallery)
    want, scale = quantize_sets(g16.sets.float())  # the fp16 encoding, quantized: the one rounding of fp16 first
    assert g8.dtype == "int8" and torch.equal(g8.sets, want) and torch.equal(g8.scale, scale)
    ckpt = load_checkpoint(tiny_run)
    bank = encode_captions(ckpt.model, ckpt.tokenizer, [c for e in load_dataset(synthetic_data).train
                                                          for c in e.captions])
    assert torch.allclose(g8.margin, adaptive_margin(bank, dequantize_sets(want, scale), ckpt.model.score), atol=1e-6)
    with pytest.raises(ValueError, match="unknown set dtype 'int4'"):
        build_gallery(tiny_run, tmp_path / "g4", data=synthetic_data, set_dtype="int4")


def test_folder_of_images_via_cli(tiny_run, tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / "cam2").mkdir(parents=True)
    for name in ("0007_c1_001.png", "street.png", "cam2/0012_c2_004.jpg", "-1_c3_000.jpg"):
        Image.new("RGB", (24, 64), (30, 60, 90)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "photos.safetensors"
    main([str(tiny_run), "--images", str(folder), "--out", str(out), "--batch-size", "3"])
    g = load_gallery(out)
    assert g.paths == ["-1_c3_000.jpg", "0007_c1_001.png", "cam2/0012_c2_004.jpg", "street.png"]
    assert g.ids.tolist() == [-1, 7, 12, -1] and g.root == str(folder.resolve())
    assert f"wrote {out}" in capsys.readouterr().out


def test_clear_refusals(tiny_run, synthetic_data, tmp_path):
    with pytest.raises(ValueError, match="give a dataset"):
        build_gallery(tiny_run, tmp_path / "g.safetensors")
    with pytest.raises(ValueError, match="margin_bank='train' names a split of a dataset: give data too"):
        build_gallery(tiny_run, tmp_path / "g.safetensors", images=tmp_path, margin_bank="train")
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        build_gallery(tiny_run, tmp_path / "g.safetensors", data=synthetic_data, backend="tensorrt")
    with pytest.raises(FileNotFoundError, match=f"no images .* under {tmp_path}"):
        build_gallery(tiny_run, tmp_path / "g.safetensors", images=tmp_path)
    with pytest.raises(NotADirectoryError, match="image folder .*nowhere does not exist"):
        build_gallery(tiny_run, tmp_path / "g.safetensors", images=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        build_gallery(tmp_path / "no-ckpt", tmp_path / "g.safetensors", data=synthetic_data)


@pytest.mark.slow
def test_torchrun_splits_the_chunks_over_ranks_and_equals_one_process(tiny_run, synthetic_data, torch_gallery,
                                                                     tmp_path):
    """Two CPU processes (gloo), each encoding every other chunk; rank 0 merges."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "ranks.safetensors"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--standalone", str(repo / "export" / "build_gallery.py"), str(tiny_run),
                           "--data", str(synthetic_data), "--out", str(out), "--chunk-size", "3", "--batch-size", "2"],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote") == 1  # rank 0 alone reports
    a, b = load_gallery(out), load_gallery(torch_gallery)
    torch.testing.assert_close(a.sets.float(), b.sets.float(), atol=1e-3, rtol=0)
    assert a.paths == b.paths and torch.equal(a.ids, b.ids)
    assert not (tmp_path / "ranks.safetensors.parts").exists()
