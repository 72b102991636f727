"""The gallery file: a model's embedding sets of a collection of images, in one safetensors file.

Tensors: `sets` float16 [N, K+1, D] (L2-normalised rows, row 0 the global feature), `ids`
int64 [N] (person ids, -1 where unknown), optional `margin` float32 [N] (the adaptive margin
already scaled by its beta: search subtracts it as is). Metadata (strings): format, version,
the checkpoint's fingerprint (a gallery is only searched with queries of the same weights),
the scoring parameters `alpha` and `weight` (Retriever.score's), `paths` (JSON list of the
images' paths relative to `root`) and `root` (the folder they were read from at build time).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

FORMAT = "tbps-gallery"
VERSION = 1


class GalleryError(ValueError):
    """A gallery file that cannot be used: the message names the file and what is wrong."""


@dataclass
class Gallery:
    sets: torch.Tensor           # float16 [N, K+1, D]
    ids: torch.Tensor            # int64 [N]
    paths: list[str]             # relative to `root`
    margin: torch.Tensor | None  # float32 [N]
    fingerprint: str
    alpha: float
    weight: float
    root: str = ""

    def __len__(self) -> int:
        return len(self.paths)


def _check(where: str, sets: torch.Tensor, ids: torch.Tensor, paths: list, margin: torch.Tensor | None) -> None:
    if sets.ndim != 3 or sets.shape[0] == 0 or sets.shape[1] == 0:
        raise GalleryError(f"{where}: sets must be a non-empty [N, K+1, D] tensor, got shape {list(sets.shape)}")
    n = sets.shape[0]
    if ids.dtype != torch.int64 or ids.shape != (n,):
        raise GalleryError(f"{where}: ids must be int64 [{n}], got {ids.dtype} {list(ids.shape)}")
    if not isinstance(paths, list) or len(paths) != n or not all(isinstance(p, str) for p in paths):
        raise GalleryError(f"{where}: paths must be a list of {n} strings, got "
                           f"{len(paths) if isinstance(paths, list) else type(paths).__name__}")
    if margin is not None and (margin.dtype != torch.float32 or margin.shape != (n,)):
        raise GalleryError(f"{where}: margin must be float32 [{n}], got {margin.dtype} {list(margin.shape)}")


def save_gallery(path: str | os.PathLike, sets: torch.Tensor, ids, paths: list[str], fingerprint: str,
                 alpha: float, weight: float, margin: torch.Tensor | None = None, root: str = "") -> Path:
    """Write a gallery file atomically (a kill mid-write leaves any previous file intact).
    `sets` is stored as float16, `ids` as int64, `margin` as float32."""
    path = Path(path)
    sets = torch.as_tensor(sets).detach().cpu().to(torch.float16).contiguous()
    ids = torch.as_tensor(ids).detach().cpu().to(torch.int64).contiguous()
    margin = None if margin is None else torch.as_tensor(margin).detach().cpu().float().contiguous()
    paths = [str(p) for p in paths]
    _check(str(path), sets, ids, paths, margin)
    tensors = {"sets": sets, "ids": ids}
    if margin is not None:
        tensors["margin"] = margin
    metadata = {"format": FORMAT, "version": str(VERSION), "fingerprint": str(fingerprint),
                "alpha": repr(float(alpha)), "weight": repr(float(weight)),
                "paths": json.dumps(paths), "root": str(root)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)
    return path


def load_gallery(path: str | os.PathLike, fingerprint: str | None = None) -> Gallery:
    """A validated gallery; with `fingerprint` (the querying checkpoint's), a gallery built by
    other weights is refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"gallery file not found: {path}")
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise GalleryError(f"{path}: not a readable safetensors gallery file ({e})") from None
    if meta.get("format") != FORMAT:
        raise GalleryError(f"{path}: not a {FORMAT} file (metadata format {meta.get('format')!r})")
    missing = [k for k in ("version", "fingerprint", "alpha", "weight", "paths") if k not in meta]
    missing += [k for k in ("sets", "ids") if k not in tensors]
    if missing:
        raise GalleryError(f"{path}: missing {missing}")
    try:
        version, paths = int(meta["version"]), json.loads(meta["paths"])
        alpha, weight = float(meta["alpha"]), float(meta["weight"])
    except ValueError as e:  # json.JSONDecodeError is one
        raise GalleryError(f"{path}: bad metadata ({e})") from None
    if version > VERSION:
        raise GalleryError(f"{path}: gallery version {version} is newer than this reader's {VERSION}")
    if fingerprint is not None and meta["fingerprint"] != fingerprint:
        raise GalleryError(f"{path}: built by checkpoint {meta['fingerprint']}, but the model searching it "
                           f"is checkpoint {fingerprint}: rebuild the gallery with this checkpoint")
    if tensors["sets"].dtype != torch.float16:
        raise GalleryError(f"{path}: sets must be float16, got {tensors['sets'].dtype}")
    _check(str(path), tensors["sets"], tensors["ids"], paths, tensors.get("margin"))
    return Gallery(tensors["sets"], tensors["ids"], paths, tensors.get("margin"), meta["fingerprint"],
                   alpha, weight, meta.get("root", ""))
