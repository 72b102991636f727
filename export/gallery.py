"""The gallery: a model's embedding sets of a collection of images, with each item's metadata.

Per item: the set float16 [K+1, D] (L2-normalised rows, row 0 the global feature), the person
id (int64, -1 where unknown), the path relative to `root` (the folder the images were read
from at build time), optionally the adaptive margin (float32, already scaled by its beta:
search subtracts it as is), the camera (an index into the gallery's camera names) and the time
(int64 ms UTC) (export/gallery_meta.py; unknown: -1, NO_TIME). Per gallery: the checkpoint's
fingerprint (a gallery is only searched with queries of the same weights) and the scoring
parameters `alpha` and `weight` (Retriever.score's).

save_gallery writes version 3, a directory of fixed-size segments with no limit on the item
count (export/gallery_store.py, export/gallery_writer.py). load_gallery also reads the single
safetensors files of versions 1 and 2 (paths in the header, which safetensors caps at 100 MB:
about 2.7M paths), as a gallery of one segment; `tbps compact` or rewrite_gallery converts.
Version 1 files (before cameras and times) load with every camera and time unknown.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from export.gallery_meta import NO_CAMERA, NO_TIME
from export.gallery_store import FORMAT, Gallery, GalleryError, Segment, gallery_files, open_gallery_dir
from export.gallery_writer import SEGMENT_SIZE, GalleryWriter

__all__ = ["Gallery", "GalleryError", "Segment", "gallery_bytes", "load_gallery", "save_gallery"]
LEGACY_VERSION = 2  # the newest single-file version


def save_gallery(path: str | os.PathLike, sets: torch.Tensor, ids, paths: list[str], fingerprint: str,
                 alpha: float, weight: float, margin: torch.Tensor | None = None, root: str = "",
                 cameras: list[str] = (), camera=None, time=None, segment_size: int = SEGMENT_SIZE,
                 set_dtype: str = "float16") -> Path:
    """Write a gallery directory atomically (a failure or a kill mid-write leaves any previous
    gallery at `path` intact). `sets` is stored as float16 (set_dtype "int8": 8-bit, a scale per
    row), `ids` as int64, `margin` as float32; `camera`/`time` (None: all unknown) as int32/int64."""
    sets = torch.as_tensor(sets).detach()
    paths = [str(p) for p in paths]
    n = len(paths)
    if sets.ndim != 3 or sets.shape[0] == 0 or sets.shape[1] == 0:
        raise GalleryError(f"{path}: sets must be a non-empty [N, K+1, D] tensor, got shape {list(sets.shape)}")
    if sets.shape[0] != n:
        raise GalleryError(f"{path}: paths must be a list of {sets.shape[0]} strings, got {n}")
    for name, values in (("ids", ids), ("margin", margin), ("camera", camera), ("time", time)):
        if values is not None and len(values) != n:
            raise GalleryError(f"{path}: {name} must be [{n}] like the paths, got {len(values)}")
    ids = torch.as_tensor(ids if isinstance(ids, torch.Tensor) else list(ids))
    with GalleryWriter(path, tuple(sets.shape[1:]), fingerprint, alpha, weight, root, cameras, margin is not None,
                       segment_size, set_dtype) as w:
        for a in range(0, n, segment_size):  # one segment at a time: no copy of the whole gallery
            b = min(a + segment_size, n)
            w.add(sets[a:b], ids[a:b], paths[a:b], None if margin is None else margin[a:b],
                  None if camera is None else camera[a:b], None if time is None else time[a:b])
    return Path(path)


def gallery_bytes(path: str | os.PathLike) -> int:
    """The bytes a gallery takes on disk (a version 1 or 2 file, or a directory's files)."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in gallery_files(path))


def load_gallery(path: str | os.PathLike, fingerprint: str | None = None, with_sets: bool = True) -> Gallery:
    """A validated gallery (a version-3 directory, or a version 1 or 2 file); with `fingerprint`
    (the querying checkpoint's), a gallery built by other weights is refused. `with_sets=False`:
    the sets are never read (`sets` is then a storage-less `meta` tensor of their shape), for a
    process that only needs the items' metadata."""
    path = Path(path)
    if path.is_dir():
        return open_gallery_dir(path, fingerprint, with_sets)
    if not path.is_file():
        raise FileNotFoundError(f"gallery not found: {path}")
    return _load_legacy(path, fingerprint, with_sets)


def _load_legacy(path: Path, fingerprint: str | None, with_sets: bool) -> Gallery:
    """A version 1 or 2 safetensors file, as a gallery of one segment held in memory."""
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
    if version > LEGACY_VERSION:
        raise GalleryError(f"{path}: gallery file version {version}; single files go up to {LEGACY_VERSION} "
                           f"(version 3 is a directory)")
    if fingerprint is not None and meta["fingerprint"] != fingerprint:
        raise GalleryError(f"{path}: built by checkpoint {meta['fingerprint']}, but the model searching it "
                           f"is checkpoint {fingerprint}: rebuild the gallery with this checkpoint")
    sets, ids, margin = tensors["sets"], tensors["ids"], tensors.get("margin")
    n = len(paths) if isinstance(paths, list) else 0
    camera = tensors.get("camera", torch.full((n,), NO_CAMERA, dtype=torch.int32))
    time = tensors.get("time", torch.full((n,), NO_TIME, dtype=torch.int64))
    _check(path, sets, ids, paths, margin, cameras, camera, time)
    known = time[time != NO_TIME]
    segment = Segment(0, n, sorted(set(camera.tolist())), None if not known.numel() else
                      (int(known.min()), int(known.max())), data=sets)
    return Gallery([segment], tuple(sets.shape[1:]), ids, paths, margin, meta["fingerprint"], alpha, weight,
                   meta.get("root", ""), cameras, camera, time, with_sets, path)


def _check(where: Path, sets: torch.Tensor, ids: torch.Tensor, paths: list, margin: torch.Tensor | None,
           cameras: list, camera: torch.Tensor, time: torch.Tensor) -> None:
    """A version 1 or 2 file's tensors and metadata agree."""
    if sets.dtype != torch.float16 or sets.ndim != 3 or sets.shape[0] == 0 or sets.shape[1] == 0:
        raise GalleryError(f"{where}: sets must be a non-empty float16 [N, K+1, D] tensor, got {sets.dtype} "
                           f"{list(sets.shape)}")
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
    if not (NO_CAMERA <= int(camera.min()) and int(camera.max()) < len(cameras)):
        raise GalleryError(f"{where}: camera indices must be -1 or below {len(cameras)}")
