"""The checkpoint contract: the one loader every stage reads a trained model through.

A checkpoint is a directory:
  model.safetensors   weights only (loading never unpickles code)
  config.json         architecture, method, tokenizer, preprocessing (image size, resize filter,
                      normalisation), set size, fingerprint
  tokenizer.txt.gz    the BPE merges the model was trained with (CLIP's own, or a small trained one)
  train_state.pt      optional: optimizer / scheduler / RNG state for exact resume
                      (plain tensors and numbers, read with torch.load(weights_only=True))
A training run directory holds `epoch_NNN/` checkpoints and `best/`; wherever a checkpoint
is expected, a run directory is accepted and resolves to its `best/` (else its last epoch).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trainer.data.tokenizer import Tokenizer
from trainer.records import read_json_record
from trainer.retriever import Retriever, build_retriever

FORMAT = "tbps-checkpoint"
VERSION = 1
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
TOKENIZER_NAME, STATE_NAME = "tokenizer.txt.gz", "train_state.pt"
REQUIRED_KEYS = ("format", "version", "method", "method_args", "model", "num_classes",
                 "embed_dim", "set_size", "image", "tokenizer", "fingerprint")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: the message names the file and what is wrong."""


@dataclass
class Checkpoint:
    path: Path
    config: dict
    model: Retriever
    tokenizer: Tokenizer

    @property
    def fingerprint(self) -> str:
        return self.config["fingerprint"]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.config["image"]["size"])


def file_fingerprint(path: Path) -> str:
    """First 16 hex digits of the SHA-256 of a file: names a set of weights."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def save_checkpoint(path: str | os.PathLike, model: Retriever, tokenizer: Tokenizer,
                    meta: dict | None = None, train_state: dict | None = None) -> Path:
    """Write a checkpoint directory atomically: a kill mid-write leaves the old one intact."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, tmp / WEIGHTS_NAME, metadata={"format": FORMAT})
    shutil.copyfile(tokenizer.merges_path, tmp / TOKENIZER_NAME)
    clip = model.clip.config
    config = {
        "format": FORMAT, "version": VERSION,
        "method": model.method, "method_args": model.args,
        "model": clip.to_dict(),
        "num_classes": model.classifier.out_features,
        "embed_dim": clip.embed_dim, "set_size": model.set_size,
        "image": model.preprocess.record(),
        "tokenizer": {"file": TOKENIZER_NAME, "context_length": tokenizer.context_length,
                      "vocab_size": tokenizer.vocab_size, "sot_id": tokenizer.sot_id,
                      "eot_id": tokenizer.eot_id, "pad_id": tokenizer.pad_id},
        "fingerprint": file_fingerprint(tmp / WEIGHTS_NAME),
        "meta": meta or {},
    }
    (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    if train_state is not None:
        torch.save(train_state, tmp / STATE_NAME)
    if path.exists():
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)
    return path


def epoch_dirs(run_dir: Path) -> list[Path]:
    """Completed epoch checkpoints of a run, oldest first (`.tmp` ones are unfinished)."""
    return sorted(p for p in run_dir.glob("epoch_[0-9][0-9][0-9]") if (p / CONFIG_NAME).is_file())


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory, or a run directory's `best/` (else its last epoch)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if (path / CONFIG_NAME).is_file():
        return path
    if (path / "best" / CONFIG_NAME).is_file():
        return path / "best"
    epochs = epoch_dirs(path)
    if epochs:
        return epochs[-1]
    raise CheckpointError(f"{path} is neither a checkpoint directory (no {CONFIG_NAME}) "
                          f"nor a training run (no best/ or epoch_NNN/)")


def read_config(path: str | os.PathLike) -> dict:
    """The validated config.json of a checkpoint (or run) directory."""
    path = resolve_checkpoint(path)
    return read_json_record(path / CONFIG_NAME, FORMAT, VERSION, REQUIRED_KEYS, CheckpointError, CheckpointError,
                            "not a checkpoint")


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Model (eval mode), tokenizer and config of a checkpoint; weights verified by fingerprint."""
    path = resolve_checkpoint(path)
    config = read_config(path)
    model = build_retriever(config)
    load_weights(path, model)
    tokenizer = Tokenizer(path / config["tokenizer"]["file"], config["tokenizer"]["context_length"])
    return Checkpoint(path, config, model.to(device).eval(), tokenizer)


def load_weights(path: str | os.PathLike, model: Retriever) -> None:
    """Load a checkpoint's weights into `model`, verified against the config's fingerprint."""
    path = resolve_checkpoint(path)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint weights not found: {weights}")
    expected = read_config(path)["fingerprint"]
    found = file_fingerprint(weights)
    if found != expected:
        raise CheckpointError(f"{weights}: fingerprint {found} does not match {expected} "
                              f"in {path / CONFIG_NAME} (file changed or corrupt)")
    try:
        result = model.load_state_dict(load_file(weights), strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{weights} does not fit {path / CONFIG_NAME}: {e}") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{weights}: missing keys {result.missing_keys[:10]}, "
                              f"unexpected keys {result.unexpected_keys[:10]}")


def load_train_state(path: str | os.PathLike) -> dict:
    return torch.load(Path(path) / STATE_NAME, map_location="cpu", weights_only=True)
