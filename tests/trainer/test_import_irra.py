"""`tbps import irra`: a state dict in IRRA's layout (written here from the tiny config: the key
names and shapes are facts of IRRA's model/build.py, no IRRA code) becomes a baseline checkpoint
whose encoders compute what IRRA's did with those weights, and which the export stage takes."""
import argparse

import numpy as np
import pytest
import torch

from export.ort_encoders import OnnxEncoders
from export.to_onnx import export_onnx
from tests.conftest import run_command
from trainer.checkpoint import load_checkpoint
from trainer.data.pixels import Preprocess
from trainer.import_irra import import_irra
from trainer.model import CLIP, load_config

MERGES = "#version: 0.2\nt h\nth e</w>\n"  # vocabulary 516: 512 byte symbols, 2 merges, start, end
SIZE, CLASSES = (64, 32), 9


def _mlm_heads(d: int, vocab: int) -> dict[str, torch.Tensor]:
    """IRRA's MLM-only modules (cross_attn, one cross-modal block, three LayerNorms, mlm_head)."""
    block = {"attn.in_proj_weight": (3 * d, d), "attn.in_proj_bias": (3 * d,), "attn.out_proj.weight": (d, d),
             "attn.out_proj.bias": (d,), "ln_1.weight": (d,), "ln_1.bias": (d,), "mlp.c_fc.weight": (4 * d, d),
             "mlp.c_fc.bias": (4 * d,), "mlp.c_proj.weight": (d, 4 * d), "mlp.c_proj.bias": (d,),
             "ln_2.weight": (d,), "ln_2.bias": (d,)}
    shapes = {"cross_attn.in_proj_weight": (3 * d, d), "cross_attn.in_proj_bias": (3 * d,),
              "cross_attn.out_proj.weight": (d, d), "cross_attn.out_proj.bias": (d,),
              **{f"cross_modal_transformer.resblocks.0.{k}": s for k, s in block.items()},
              **{f"{ln}.{p}": (d,) for ln in ("ln_pre_t", "ln_pre_i", "ln_post") for p in ("weight", "bias")},
              "mlm_head.dense.weight": (d, d), "mlm_head.dense.bias": (d,), "mlm_head.ln.weight": (d,),
              "mlm_head.ln.bias": (d,), "mlm_head.fc.weight": (vocab, d), "mlm_head.fc.bias": (vocab,)}
    return {k: torch.randn(s).half() for k, s in shapes.items()}


@pytest.fixture(scope="module")
def irra(tmp_path_factory):
    return write_irra(tmp_path_factory.mktemp("irra"))


def write_irra(work):
    """(IRRA's best.pth, the merges file, IRRA's model in fp32: its CLIP with the fp16 weights)."""
    (work / "merges.txt").write_text(MERGES)
    config = load_config("tiny")
    config.vision.image_size, config.text.vocab_size = SIZE, 516
    config.vision.heads = config.text.heads = config.vision.width // 64  # CLIP's rule, which the shapes cannot tell
    torch.manual_seed(0)
    clip = CLIP(config)
    # CLIP's convert_weights: conv, linear and attention weights and the projections in fp16, the rest fp32
    half = (".weight", "in_proj_weight", "in_proj_bias", ".bias", "proj", "text_projection")
    fp16 = {k: v.half() if k.endswith(half) and "ln" not in k else v for k, v in clip.state_dict().items()}
    state = {f"base_model.{k}": v for k, v in fp16.items()}
    state["classifier.weight"] = (0.001 * torch.randn(CLASSES, config.embed_dim)).half()
    state["classifier.bias"] = torch.zeros(CLASSES).half()
    state.update(_mlm_heads(config.embed_dim, 516))
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0]}]},
                "scheduler": {"last_epoch": 60, "warmup_method": "linear", "base_lrs": [1e-5]}, "epoch": 60},
               work / "best.pth")
    clip.load_state_dict({k: v.float() for k, v in fp16.items()})
    return work / "best.pth", work / "merges.txt", clip.eval()


def test_converted_encoders_equal_irras_computation(irra, tmp_path):
    path, merges, clip = irra
    out, dropped = import_irra(path, tmp_path / "ckpt", merges, SIZE)
    assert dropped == ["cross_attn", "cross_modal_transformer", "ln_post", "ln_pre_i", "ln_pre_t", "mlm_head"]
    ckpt = load_checkpoint(out)
    assert ckpt.config["method"] == "baseline" and ckpt.config["num_classes"] == CLASSES
    assert ckpt.config["meta"]["recipe"] == "irra" and ckpt.model.preprocess == Preprocess(SIZE, "bilinear")
    ids = torch.from_numpy(ckpt.tokenizer(["the man in a red shirt", "a woman", "the"])).long()
    pixels = torch.randn(3, 3, *SIZE)
    with torch.no_grad():
        # IRRA's encode_image: the CLS token's projection; encode_text: the token at argmax(ids)
        image = clip.encode_image(pixels)[1][:, 0]
        tokens = clip.encode_text(ids)[1]
        text = tokens[torch.arange(len(ids)), ids.argmax(-1)]
        torch.testing.assert_close(ckpt.model.encode_image(pixels)[:, 0], torch.nn.functional.normalize(image, dim=-1))
        torch.testing.assert_close(ckpt.model.encode_text(ids)[:, 0], torch.nn.functional.normalize(text, dim=-1))
    assert torch.equal(ckpt.model.classifier.weight.half(), torch.load(path, weights_only=True)["model"]["classifier.weight"])


def test_imported_checkpoint_exports_to_onnx(irra, tmp_path):
    path, merges, clip = irra
    out, _ = import_irra(path, tmp_path / "ckpt", merges, SIZE)
    ckpt = load_checkpoint(out)
    export = export_onnx(out, tmp_path / "onnx").parent
    encoders = OnnxEncoders(export)
    assert encoders.manifest["image"]["resize"] == "bilinear"
    pixels = torch.randn(2, 3, *SIZE)
    ids = ckpt.tokenizer(["the man", "a woman in the rain"])
    with torch.no_grad():
        np.testing.assert_allclose(encoders.encode_image(pixels.numpy()), ckpt.model.encode_image(pixels).numpy(), atol=1e-4)
        np.testing.assert_allclose(encoders.encode_text(ids), ckpt.model.encode_text(torch.from_numpy(ids)).numpy(),
                                   atol=1e-4)


def test_foreign_and_truncated_files_are_one_line(irra, tmp_path):
    path, merges, _ = irra
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"not an IRRA checkpoint: expected .* found \['state_dict'\]"):
        import_irra(tmp_path / "other.pth", tmp_path / "x", merges, SIZE)
    torch.save({"model": {"base_model.x": torch.zeros(1)}, "args": argparse.Namespace(lr=1e-5)}, tmp_path / "code.pth")
    with pytest.raises(ValueError, match="holds a pickled argparse.Namespace; only tensors and plain values are read"):
        import_irra(tmp_path / "code.pth", tmp_path / "x", merges, SIZE)
    (tmp_path / "cut.pth").write_bytes(path.read_bytes()[:5000])
    done = run_command("trainer", "import", "irra", tmp_path / "cut.pth", "--out", tmp_path / "y", "--bpe", merges,
                       "--image-size", "64x32", check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "not readable as an IRRA checkpoint" in done.stderr
    done = run_command("trainer", "import", "irra", path, "--out", tmp_path / "z", "--bpe", merges, "--image-size", "64x32")
    assert "wrote" in done.stdout and (tmp_path / "z" / "config.json").is_file()
    assert not (tmp_path / "y").exists()
