"""The gallery file: a model's embedding sets of a collection of images, in one safetensors file.

Tensors: `sets` float16 [N, K+1, D] (L2-normalised rows, row 0 the global feature), `ids`
int64 [N] (person ids, -1 where unknown), optional `margin` float32 [N] (the adaptive margin
already scaled by its beta: search subtracts it as is), `camera` int32 [N] and `time` int64
[N] (export/gallery_meta.py: an index into `cameras`, milliseconds UTC; unknown: -1, NO_TIME).
Metadata (strings): format, version, the checkpoint's fingerprint (a gallery is only searched
with queries of the same weights), the scoring parameters `alpha` and `weight`
(Retriever.score's), `paths` (JSON list of the images' paths relative to `root`), `root` (the
folder they were read from at build time) and `cameras` (JSON list of camera names).
Version 1 files (before cameras and times) load with every camera and time unknown.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from export.gallery_meta import NO_CAMERA, NO_TIME, allowed_items

FORMAT = "tbps-gallery"
VERSION = 2


class GalleryError(ValueError):
    """A gallery file that cannot be used: the message names the file and what is wrong."""


def _unknown_camera(n: int) -> torch.Tensor:
    return torch.full((n,), NO_CAMERA, dtype=torch.int32)


def _unknown_time(n: int) -> torch.Tensor:
    return torch.full((n,), NO_TIME, dtype=torch.int64)


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
    cameras: list[str] = field(default_factory=list)
    camera: torch.Tensor | None = None  # int32 [N], an index into `cameras`; None: all unknown
    time: torch.Tensor | None = None    # int64 [N], ms since the epoch, UTC; None: all unknown

    def __post_init__(self):
        n = len(self.paths)
        self.camera = _unknown_camera(n) if self.camera is None else self.camera
        self.time = _unknown_time(n) if self.time is None else self.time

    def __len__(self) -> int:
        return len(self.paths)

    def allowed(self, cameras=None, since=None, until=None) -> torch.Tensor | None:
        """The bool mask [N] of the items a query's filter keeps (None: no filter)."""
        return allowed_items(self.cameras, self.camera, self.time, cameras, since, until)


def _check(where: str, sets: torch.Tensor, ids: torch.Tensor, paths: list, margin: torch.Tensor | None,
           cameras: list, camera: torch.Tensor, time: torch.Tensor) -> None:
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
    if camera.dtype != torch.int32 or camera.shape != (n,) or time.dtype != torch.int64 or time.shape != (n,):
        raise GalleryError(f"{where}: camera must be int32 [{n}] and time int64 [{n}], got {camera.dtype} "
                           f"{list(camera.shape)} and {time.dtype} {list(time.shape)}")
    if not isinstance(cameras, list) or not all(isinstance(c, str) and c for c in cameras) \
            or len(set(cameras)) != len(cameras):
        raise GalleryError(f"{where}: cameras must be distinct non-empty names, got {cameras!r}")
    if n and not (NO_CAMERA <= int(camera.min()) and int(camera.max()) < len(cameras)):
        raise GalleryError(f"{where}: camera indices must be -1 or below {len(cameras)}")


def save_gallery(path: str | os.PathLike, sets: torch.Tensor, ids, paths: list[str], fingerprint: str,
                 alpha: float, weight: float, margin: torch.Tensor | None = None, root: str = "",
                 cameras: list[str] = (), camera=None, time=None) -> Path:
    """Write a gallery file atomically (a kill mid-write leaves any previous file intact).
    `sets` is stored as float16, `ids` as int64, `margin` as float32; `camera`/`time` (None:
    all unknown) as int32/int64."""
    path = Path(path)
    sets = torch.as_tensor(sets).detach().cpu().to(torch.float16).contiguous()
    ids = torch.as_tensor(ids).detach().cpu().to(torch.int64).contiguous()
    margin = None if margin is None else torch.as_tensor(margin).detach().cpu().float().contiguous()
    paths, cameras = [str(p) for p in paths], list(cameras)
    n = len(paths)
    camera = _unknown_camera(n) if camera is None else torch.as_tensor(camera).detach().cpu().to(torch.int32)
    time = _unknown_time(n) if time is None else torch.as_tensor(time).detach().cpu().to(torch.int64)
    _check(str(path), sets, ids, paths, margin, cameras, camera, time)
    tensors = {"sets": sets, "ids": ids, "camera": camera.contiguous(), "time": time.contiguous()}
    if margin is not None:
        tensors["margin"] = margin
    metadata = {"format": FORMAT, "version": str(VERSION), "fingerprint": str(fingerprint),
                "alpha": repr(float(alpha)), "weight": repr(float(weight)),
                "paths": json.dumps(paths), "root": str(root), "cameras": json.dumps(cameras)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)
    return path


def load_gallery(path: str | os.PathLike, fingerprint: str | None = None, with_sets: bool = True) -> Gallery:
    """A validated gallery; with `fingerprint` (the querying checkpoint's), a gallery built by
    other weights is refused. `with_sets=False` reads everything but the sets, which are then a
    storage-less `meta` tensor of their shape (a process that only needs the items' metadata)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"gallery file not found: {path}")
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys() if with_sets or k != "sets"}
            if not with_sets and "sets" in f.keys():
                sets = f.get_slice("sets")
                dtype = {"F16": torch.float16}.get(sets.get_dtype(), torch.float32)
                tensors["sets"] = torch.empty(sets.get_shape(), dtype=dtype, device="meta")
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
        cameras = json.loads(meta.get("cameras", "[]"))
    except ValueError as e:  # json.JSONDecodeError is one
        raise GalleryError(f"{path}: bad metadata ({e})") from None
    if version > VERSION:
        raise GalleryError(f"{path}: gallery version {version} is newer than this reader's {VERSION}")
    if fingerprint is not None and meta["fingerprint"] != fingerprint:
        raise GalleryError(f"{path}: built by checkpoint {meta['fingerprint']}, but the model searching it "
                           f"is checkpoint {fingerprint}: rebuild the gallery with this checkpoint")
    if tensors["sets"].dtype != torch.float16:
        raise GalleryError(f"{path}: sets must be float16, got {tensors['sets'].dtype}")
    n = len(paths) if isinstance(paths, list) else 0
    camera = tensors["camera"] if "camera" in tensors else _unknown_camera(n)
    time = tensors["time"] if "time" in tensors else _unknown_time(n)
    _check(str(path), tensors["sets"], tensors["ids"], paths, tensors.get("margin"), cameras, camera, time)
    return Gallery(tensors["sets"], tensors["ids"], paths, tensors.get("margin"), meta["fingerprint"],
                   alpha, weight, meta.get("root", ""), cameras, camera, time)
