"""Build a gallery (export/gallery.py) from a dataset split or a folder of images.

    python export/build_gallery.py CKPT --data DIR [--split test] --out GALLERY
    python export/build_gallery.py CKPT --images FOLDER --out GALLERY
      [--margin-bank train [--margin-beta 1.0]]  adaptive margin from DIR's training captions
      [--backend torch|onnx [--onnx EXPORT_DIR]] [--batch-size 64] [--chunk-size 4096]
      [--device cpu|cuda] [--workers 0] [--meta FILE.csv|.jsonl]  camera and time per image
      [--set-dtype float16|int8]  int8: 8-bit sets with a per-row scale, half the bytes
    torchrun --nproc_per_node G export/build_gallery.py CKPT ...   one process per GPU, chunks shared out

Images are encoded in chunks of `--chunk-size`; each finished chunk goes to the sidecar folder
GALLERY.parts/ (plan.json says what is being built), so a killed build resumes at its first
missing chunk when the same command runs again. The chunks are streamed into the gallery
directory GALLERY (written atomically) and the sidecar is removed. A sidecar of another
build (other checkpoint, images, backend or chunk size) is discarded.

Folder of images: every .jpg/.jpeg/.png/.bmp/.webp under FOLDER, recursively, sorted by path.
Person ids follow the Market-1501 / DukeMTMC-reID file naming: a name starting with an integer
and "_" (`0042_c1s1_000151_01.jpg`) is person 42; other names get -1 (unknown).

`--meta` names a sidecar of each image's camera and UTC time (export/gallery_meta.py), which
the gallery stores for filtered search; it is read before any encoding, so a bad row costs
nothing. The ONNX backend runs the checkpoint's export (`--onnx`, or one written into the sidecar).
The margin bank (captions of `--margin-bank`'s split of DIR) is encoded by
trainer.evaluate.encode_captions and scored with Retriever.score, as `tbps eval --margin` does.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from export.gallery_store import SCALED, SET_DTYPES
from export.gallery_writer import GalleryWriter
from export.gallery_meta import read_sidecar
from export.manifest import load_manifest
from kernels import dequantize_sets, quantize_sets
from trainer.checkpoint import Checkpoint, load_checkpoint
from trainer.cli import run_script
from trainer.data.dataset import ImageDataset
from trainer.data.formats import ImageEntry, load_dataset
from trainer.data.transforms import build_transform
from trainer.evaluate import adaptive_margin, encode_captions

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
PERSON_PREFIX = re.compile(r"^(-?\d+)_")
BACKENDS = ("torch", "onnx")


def folder_images(folder: str | os.PathLike) -> list[ImageEntry]:
    """The images under `folder` with their ids parsed from the file names (see the module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"image folder {folder} does not exist or is not a directory")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    entries = []
    for i, p in enumerate(files):
        match = PERSON_PREFIX.match(p.name)
        entries.append(ImageEntry(p, int(match.group(1)) if match else -1, (), i))
    return entries


def _image_encoder(ckpt: Checkpoint, backend: str, onnx_dir: Path | None, parts: Path,
                   device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """pixels [B, 3, H, W] -> float32 sets [B, K+1, D] on the CPU, by the chosen backend."""
    if backend == "torch":
        model = ckpt.model.to(device)
        return lambda pixels: model.encode_image(pixels.to(device)).float().cpu()
    from export.ort_encoders import OnnxEncoders
    from export.to_onnx import export_onnx
    if onnx_dir is None:  # an export of this checkpoint kept with the build, reused on resume
        onnx_dir = parts / "onnx"
        try:
            load_manifest(onnx_dir, ckpt.fingerprint)
        except (FileNotFoundError, ValueError):
            export_onnx(ckpt.path, onnx_dir)
    encoders = OnnxEncoders(onnx_dir, fingerprint=ckpt.fingerprint)
    return lambda pixels: torch.from_numpy(encoders.encode_image(pixels.numpy()))


def _plan(ckpt: Checkpoint, entries: list[ImageEntry], root: Path, backend: str, chunk_size: int) -> dict:
    items = hashlib.sha256("\n".join(f"{e.pid}\t{e.path.relative_to(root)}" for e in entries).encode())
    return {"fingerprint": ckpt.fingerprint, "backend": backend, "chunk_size": chunk_size,
            "count": len(entries), "items": items.hexdigest()[:16]}


def _open_sidecar(parts: Path, plan: dict) -> None:
    """Keep the sidecar of the same build; start a new one otherwise."""
    plan_file = parts / "plan.json"
    if parts.is_dir():
        try:
            same = json.loads(plan_file.read_text()) == plan
        except (OSError, ValueError):
            same = False
        if same:
            return
        print(f"build_gallery: discarding {parts} (another build's chunks)", file=sys.stderr)
        shutil.rmtree(parts)
    parts.mkdir(parents=True)
    plan_file.write_text(json.dumps(plan, indent=2) + "\n")


def _save_atomic(tensors: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, tmp)
    os.replace(tmp, path)


def build_gallery(checkpoint: str | os.PathLike, out: str | os.PathLike, *, data: str | os.PathLike | None = None,
                  split: str = "test", images: str | os.PathLike | None = None, margin_bank: str | None = None,
                  margin_beta: float = 1.0, backend: str = "torch", onnx_dir: str | os.PathLike | None = None,
                  batch_size: int = 64, chunk_size: int = 4096, device: str | None = None, workers: int = 0,
                  progress: bool = True, on_chunk: Callable[[int, int], None] | None = None,
                  meta: str | os.PathLike | None = None, set_dtype: str = "float16") -> Path:
    """Encode the images of `images` (a folder) or else of `data`'s `split` into the gallery
    `out`; resumable (see the module docstring). `on_chunk(i, n)` is called after chunk i of n is
    saved. With `margin_bank` (a split of `data`), adds the adaptive margin x `margin_beta`;
    with `meta`, each image's camera and time from that sidecar; `set_dtype` "int8": 8-bit sets.
    In a process group (torchrun), rank r encodes chunks r, r + world, ... into the shared
    sidecar, then rank 0 merges them."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    if set_dtype not in SET_DTYPES:
        raise ValueError(f"unknown set dtype {set_dtype!r}; available: {', '.join(SET_DTYPES)}")
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size} and {chunk_size}")
    if images is None and data is None:
        raise ValueError("no images to encode: give a dataset (data) or a folder of images (images)")
    if margin_bank and data is None:
        raise ValueError(f"margin_bank={margin_bank!r} names a split of a dataset: give data too")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu"))
    out = Path(out)
    dataset = load_dataset(data) if data is not None else None
    if images is not None:
        root, entries = Path(images).resolve(), folder_images(Path(images).resolve())
    else:
        root, entries = dataset.root, dataset.split(split)
        if not entries:
            raise ValueError(f"split {split!r} of {dataset.root} has no images")
    paths = [str(e.path.relative_to(root)) for e in entries]
    meta_of_items = dict(zip(("cameras", "camera", "time"), read_sidecar(meta, paths))) if meta is not None else {}
    ckpt = load_checkpoint(checkpoint)
    parts = out.with_name(out.name + ".parts")
    onnx_dir = None if onnx_dir is None else Path(onnx_dir)
    if rank == 0:  # the sidecar and any ONNX export exist before another rank looks for them
        _open_sidecar(parts, _plan(ckpt, entries, root, backend, chunk_size))
        encode = _image_encoder(ckpt, backend, onnx_dir, parts, device)
    _barrier(world)
    if rank != 0:
        encode = _image_encoder(ckpt, backend, onnx_dir, parts, device)
    images_ds = ImageDataset(entries, build_transform(ckpt.model.preprocess, train=False))
    starts = range(0, len(entries), chunk_size)
    chunk_files = [parts / f"chunk_{i:06d}.safetensors" for i in range(len(starts))]
    mine = range(rank, len(starts), world)
    sizes = [min(chunk_size, len(entries) - starts[i]) for i in mine]
    done = sum(n for i, n in zip(mine, sizes) if chunk_files[i].is_file())
    with tqdm(total=sum(sizes), initial=done, desc="encode gallery", unit="img",
              disable=not progress or rank != 0) as bar, torch.no_grad():
        for i in mine:
            start, file = starts[i], chunk_files[i]
            if file.is_file():
                continue
            subset = torch.utils.data.Subset(images_ds, range(start, min(start + chunk_size, len(entries))))
            loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=workers)
            sets = []
            for batch in loader:
                sets.append(encode(batch["pixels"]).to(torch.float16))
                bar.update(len(batch["pixels"]))
            _save_atomic({"sets": torch.cat(sets)}, file)
            if on_chunk is not None:
                on_chunk(i, len(chunk_files))
    _barrier(world)
    if rank == 0:
        _merge(out, parts, chunk_files, entries, paths, ckpt, meta_of_items, root, dataset, margin_bank,
               margin_beta, device, batch_size, progress, set_dtype)
    _barrier(world)  # every rank returns once the gallery is written
    return out


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _merge(out: Path, parts: Path, chunk_files: list[Path], entries, paths: list[str], ckpt: Checkpoint,
           meta_of_items: dict, root: Path, dataset, margin_bank, margin_beta, device, batch_size, progress,
           set_dtype: str) -> None:
    """The chunks, and the margin when asked, streamed into the gallery one chunk at a time
    (never the whole gallery in memory); the sidecar goes."""
    bank = None
    if margin_bank:
        bank_file = parts / f"bank_{margin_bank}.safetensors"
        if not bank_file.is_file():
            captions = [c for e in dataset.split(margin_bank) for c in e.captions]
            bank = encode_captions(ckpt.model.to(device), ckpt.tokenizer, captions, device, batch_size, progress)
            _save_atomic({"bank": bank}, bank_file)
        bank = load_file(bank_file)["bank"]
    ids = torch.tensor([e.pid for e in entries], dtype=torch.int64)
    camera, time = meta_of_items.get("camera"), meta_of_items.get("time")
    set_shape = tuple(load_file(chunk_files[0])["sets"].shape[1:])
    with GalleryWriter(out, set_shape, ckpt.fingerprint, root=str(root), cameras=meta_of_items.get("cameras", ()),
                       margin=bank is not None, dtype=set_dtype, **ckpt.model.score_params) as writer:
        start = 0
        for file in chunk_files:
            sets, scale = load_file(file)["sets"], None
            if set_dtype == SCALED:
                sets, scale = quantize_sets(sets.float())
            rows = slice(start, start + len(sets))
            # scored against the gallery as stored (fp16 or 8-bit), as a search will score it; per item, so per chunk
            stored = sets.float() if scale is None else dequantize_sets(sets, scale)
            margin = None if bank is None else adaptive_margin(bank, stored, ckpt.model.score, beta=margin_beta)
            writer.add(sets, ids[rows], paths[rows], margin, None if camera is None else camera[rows],
                       None if time is None else time[rows], scale)
            start = rows.stop
    shutil.rmtree(parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint directory (or training run: its best/)")
    parser.add_argument("--out", required=True, help="gallery to write (a directory: export/gallery_store.py)")
    parser.add_argument("--data", help="dataset root (CUHK-PEDES, ICFG-PEDES, RSTPReid or synthetic)")
    parser.add_argument("--split", default="test", help="split of --data to encode (default: test)")
    parser.add_argument("--images", help="a folder of images to encode instead of a dataset split")
    parser.add_argument("--margin-bank", help="split of --data whose captions give the adaptive margin (e.g. train)")
    parser.add_argument("--margin-beta", type=float, default=1.0, help="scale of the adaptive margin")
    parser.add_argument("--backend", choices=BACKENDS, default="torch")
    parser.add_argument("--onnx", help="ONNX export of the checkpoint for --backend onnx (default: exported here)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=4096, help="images per resumable chunk")
    parser.add_argument("--device", help="torch device (default: cuda if available)")
    parser.add_argument("--workers", type=int, default=0, help="image decoding processes")
    parser.add_argument("--meta", help="sidecar .csv or .jsonl of each image's path, camera and time (UTC)")
    parser.add_argument("--set-dtype", choices=list(SET_DTYPES), default="float16",
                        help="how sets are stored: float16, or int8 (a scale per row: half the bytes)")


def run(a: argparse.Namespace) -> None:
    if a.data is None and a.images is None:
        raise ValueError("give --data DIR or --images FOLDER")
    ranks = int(os.environ.get("WORLD_SIZE", 1)) > 1  # torchrun: one process per GPU (or CPU process)
    if ranks:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        out = build_gallery(a.checkpoint, a.out, data=a.data, split=a.split, images=a.images,
                            margin_bank=a.margin_bank, margin_beta=a.margin_beta, backend=a.backend, onnx_dir=a.onnx,
                            batch_size=a.batch_size, chunk_size=a.chunk_size, device=a.device, workers=a.workers,
                            meta=a.meta, set_dtype=a.set_dtype)
    finally:
        if ranks:
            dist.destroy_process_group()
    if os.environ.get("RANK", "0") == "0":
        print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    run_script(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
