"""Checkpoints written before a refactor load and evaluate to the same figures after it.

tests/trainer/data/checkpoint_compat.json holds, per method, what the code of its day recorded
for a tiny model: the config.json it wrote (less the fingerprint), the state dict's layout (key,
shape, dtype) and summaries of the sets, scores and training losses of weights filled by `_fill`.
The test rebuilds the weights from that layout, writes the checkpoint directory as
trainer/checkpoint.py lays it out (VERSION 1), loads it with today's `load_checkpoint` and must get
the same keys and figures. To record it again (only for a deliberate format change):
    .venv/bin/python -m tests.trainer.test_checkpoint_compat
"""
from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from trainer.checkpoint import load_checkpoint
from trainer.model import load_config

DATA = Path(__file__).parent / "data" / "checkpoint_compat.json"
MERGES = "#version: 0.2\nt h\nth e</w>\n"  # two merges: vocabulary 516, end-of-text id 515
SMALL_ARGS = {"baseline": {}, "esa": {"slots": 2, "iterations": 2},
              "sen": {"decoder_width": 32, "decoder_layers": 1, "decoder_heads": 2},
              "ssan": {"resnet_layers": [1, 1, 1, 1], "resnet_width": 8, "word_dim": 16, "part_dim": 16,
                       "relation_dim": 8}}


def _fill(key: str, shape: list[int], dtype: str) -> torch.Tensor:
    """Deterministic values per key, sane enough for finite outputs (running variances positive)."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    if dtype == "int64":  # num_batches_tracked
        return torch.randint(0, 100, shape, generator=g, dtype=torch.int64)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    x = x + 0.5 if key.endswith("running_var") else (x - 0.5) * 0.5
    return x.to(getattr(torch, dtype))


def _write_checkpoint(path: Path, config: dict, layout: dict) -> Path:
    """A checkpoint directory as trainer/checkpoint.py (VERSION 1) writes it."""
    path.mkdir(parents=True)
    state = {k: _fill(k, shape, dtype) for k, (shape, dtype) in layout.items()}
    save_file(state, path / "model.safetensors", metadata={"format": "tbps-checkpoint"})
    (path / "tokenizer.txt.gz").write_bytes(gzip.compress(MERGES.encode(), mtime=0))
    fingerprint = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()[:16]
    (path / "config.json").write_text(json.dumps(dict(config, fingerprint=fingerprint), indent=2))
    return path


def _inputs(eot_id: int, image_size: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 500, (3, 77), generator=g, dtype=torch.int32)
    for row, end in enumerate((5, 12, 76)):  # captions of different lengths, one full
        ids[row, end], ids[row, end + 1:] = eot_id, 0
    return ids, torch.randn(2, 3, *image_size, generator=g), torch.tensor([0, 1, 1])


def _round(x: torch.Tensor) -> list:
    return [round(v, 6) for v in x.double().flatten().tolist()]


def _figures(ckpt) -> dict:
    """Small summaries of what a loaded checkpoint computes: sets, scores, training losses."""
    model, config = ckpt.model, ckpt.config
    ids, pixels, labels = _inputs(config["tokenizer"]["eot_id"], config["image"]["size"])
    with torch.no_grad():
        text, image = model.encode_text(ids), model.encode_image(pixels)
        out = {"set_size": model.set_size, "score_params": model.score_params, "scores": _round(model.score(text, image))}
        for name, sets in (("text", text), ("image", image)):  # shape, per-item sums, first 3 columns
            out.update({f"{name}_shape": list(sets.shape), f"{name}_sums": _round(sets.sum(dim=(1, 2))),
                        f"{name}_head": _round(sets[:, :, :3])})
    model.train()
    torch.manual_seed(0)  # SEN's random patch mask
    losses = model(pixels[[0, 1, 1]], ids.long(), labels, other_ids=ids.long()[[0, 2, 1]])
    out["losses"] = {k: round(v.item(), 5) for k, v in sorted(losses.items())}
    out["new_params"] = sorted({".".join(n.split(".")[:2]) for n in model.new_parameter_names()})
    return out


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(DATA.read_text())


@pytest.mark.parametrize("method", sorted(SMALL_ARGS))
def test_old_checkpoint_loads_with_the_same_keys_and_figures(method, recorded, tmp_path):
    old = recorded[method]
    ckpt = load_checkpoint(_write_checkpoint(tmp_path / method, old["config"], old["layout"]))
    assert "resize" not in old["config"]["image"] and ckpt.model.preprocess.resize == "bicubic"  # as trained
    layout = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in ckpt.model.state_dict().items()}
    assert list(layout.items()) == list(old["layout"].items())  # the order too: optimizer state is by position
    got, want = _figures(ckpt), old["figures"]
    assert got.keys() == want.keys()
    for key, value in want.items():
        numbers = isinstance(value, dict) or (isinstance(value, list) and all(isinstance(v, float) for v in value))
        assert got[key] == (pytest.approx(value, abs=1e-5, rel=1e-5) if numbers else value), key


def _record() -> dict:
    """What this code writes and computes, per method (run once, on the code whose checkpoints must keep loading)."""
    import tempfile

    from trainer.checkpoint import save_checkpoint
    from trainer.data.tokenizer import Tokenizer
    from trainer.retriever import Retriever

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        merges = Path(tmp) / "merges.txt"
        merges.write_text(MERGES)
        tokenizer = Tokenizer(merges)
        config = load_config("tiny")
        config.embed_dim, config.text.vocab_size = 32, tokenizer.vocab_size
        for tower in (config.vision, config.text):
            tower.width, tower.layers, tower.heads = 32, 1, 2
        for method, args in SMALL_ARGS.items():
            model = Retriever(config, method, num_classes=3, eot_id=tokenizer.eot_id, args=args)
            saved = json.loads((save_checkpoint(Path(tmp) / method, model, tokenizer) / "config.json").read_text())
            del saved["fingerprint"]
            layout = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()}
            ckpt = load_checkpoint(_write_checkpoint(Path(tmp) / f"{method}-filled", saved, layout))
            out[method] = {"config": saved, "layout": layout, "figures": _figures(ckpt)}
    return out


if __name__ == "__main__":
    DATA.parent.mkdir(exist_ok=True)
    DATA.write_text(json.dumps(_record(), separators=(",", ":")) + "\n")
    print(f"wrote {DATA} ({DATA.stat().st_size} bytes)")
