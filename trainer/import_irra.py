"""A checkpoint trained with IRRA (anosorae/IRRA) as a tbps checkpoint of the `baseline` method.

What IRRA saves (utils/checkpoint.py, `best.pth`): `torch.save({"model": state_dict, "optimizer":
..., "scheduler": ..., "epoch": ...})`. Its state dict holds the CLIP under `base_model.` with
OpenAI's key names (the positional grid already resized, 24 x 8 for its 384 x 128 images), the
ID loss's `classifier`, and the IRRA-only heads (`cross_attn`, `cross_modal_transformer`,
`ln_pre_t`, `ln_pre_i`, `ln_post`, `mlm_head`: the MLM task's), which the baseline's encoders do not
use and which are dropped. Its weights are mostly fp16 (CLIP's `convert_weights`); tbps keeps fp32.
IRRA-derived layouts import the same way when their keys match: `base_model.` and `classifier.`,
anything else at the top level is dropped and listed.

The file is read with `torch.load(weights_only=True)`: tensors and plain values, never code. Its
vocabulary is CLIP's with `<|mask|>` in place of the last merge's token (id 49405); the tokenizer
is CLIP's merges file (`bpe`), so that one word, which IRRA's own tokenizer cannot encode, reads
as the mask token. The checkpoint records IRRA's preprocessing: torchvision's default (bilinear)
resize to `image_size`, CLIP's mean and std.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from trainer.checkpoint import save_checkpoint
from trainer.data.pixels import Preprocess
from trainer.data.tokenizer import Tokenizer
from trainer.model import ClipWeightsError, check_state_dict, infer_config
from trainer.retriever import Retriever

CLIP_PREFIX, CLASSIFIER = "base_model.", "classifier."
IRRA_IMAGE_SIZE = (384, 128)  # IRRA's --img_size default


def read_irra(path: Path) -> dict[str, torch.Tensor]:
    """The model state dict of an IRRA checkpoint file, in fp32; a file that is not one is one line."""
    if not path.is_file():
        raise FileNotFoundError(f"IRRA checkpoint not found: {path}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or pickled objects weights_only refuses
        code = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if code:
            raise ValueError(f"{path}: holds a pickled {code.group(1)}; only tensors and plain values are "
                             f"read (weights_only), never code") from None
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"{path}: not readable as an IRRA checkpoint: not a torch.save file, or a truncated "
                         f"one ({type(e).__name__}: {first})") from None
    state = saved.get("model") if isinstance(saved, dict) else None
    if not isinstance(state, dict) or not any(k.startswith(CLIP_PREFIX) for k in state):
        found = sorted(saved)[:8] if isinstance(saved, dict) else type(saved).__name__
        raise ValueError(f"{path}: not an IRRA checkpoint: expected {{'model': state dict with {CLIP_PREFIX}* keys}}, "
                         f"found {found}")
    odd = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if odd:
        raise ValueError(f"{path}: model entries that are not tensors: {odd[:8]}")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def import_irra(path: str | os.PathLike, out: str | os.PathLike, bpe: str | os.PathLike,
                image_size: tuple[int, int] = IRRA_IMAGE_SIZE) -> tuple[Path, list[str]]:
    """Convert IRRA's `best.pth` into a checkpoint directory `out`; (its path, the dropped modules)."""
    path = Path(path)
    state = read_irra(path)
    clip = {k[len(CLIP_PREFIX):]: v for k, v in state.items() if k.startswith(CLIP_PREFIX)}
    head = {k[len(CLASSIFIER):]: v for k, v in state.items() if k.startswith(CLASSIFIER)}
    dropped = sorted({k.split(".")[0] for k in state if not k.startswith((CLIP_PREFIX, CLASSIFIER))})
    if "weight" not in head:
        raise ValueError(f"{path}: no {CLASSIFIER}weight: only IRRA models trained with the ID loss are imported")
    tokenizer = Tokenizer(bpe)
    config = infer_config(clip, image_size, source=str(path))
    if config.text.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"{path}: a vocabulary of {config.text.vocab_size} tokens, but {bpe} makes "
                         f"{tokenizer.vocab_size}: pass CLIP's bpe_simple_vocab_16e6.txt.gz")
    grid = clip["visual.positional_embedding"].shape[0] - 1
    if grid != config.vision.grid[0] * config.vision.grid[1]:
        raise ValueError(f"{path}: {grid} positions in the image tower's grid, not the {config.vision.grid} "
                         f"of {image_size[0]}x{image_size[1]} images: pass the --image-size it was trained at")
    model = Retriever(config, "baseline", head["weight"].shape[0], tokenizer.eot_id,
                      preprocess=Preprocess(config.vision.image_size, "bilinear"))
    state = {**{f"clip.{k}": v for k, v in clip.items()}, **{CLASSIFIER + k: v for k, v in head.items()}}
    try:
        check_state_dict(model, state, str(path))
    except ClipWeightsError as e:  # every bad key, on one line
        raise ValueError(" ".join(str(e).split())) from None
    model.load_state_dict(state, strict=True)
    meta = {"recipe": "irra", "imported_from": str(path.resolve()), "dropped": dropped}
    return save_checkpoint(out, model, tokenizer, meta), dropped
