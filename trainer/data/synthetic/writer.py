"""Writing the dataset: identities split into train / val / test, images and the annotation file."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from trainer.data.synthetic.attributes import Person, sample_person
from trainer.data.synthetic.captions import _caption, tokenize_caption
from trainer.data.synthetic.render.scene import _render


def _split_counts(ids: int) -> tuple[int, int, int]:
    n_test = max(1, int(round(0.2 * ids)))
    n_val = max(1, int(round(0.1 * ids)))
    return ids - n_val - n_test, n_val, n_test


def _checked(ids, seed, image_size, images_per_id) -> tuple[int, int, int, int]:
    """Validate the arguments of ``write_synthetic``; returns (H, W, lo, hi)."""
    if isinstance(ids, bool) or not isinstance(ids, (int, np.integer)) or ids < 3:
        raise ValueError("ids must be an integer >= 3 (train, val and test need one each), "
                         f"got {ids!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    try:
        H, W = (int(v) for v in image_size)
        lo, hi = (int(v) for v in images_per_id)
    except (TypeError, ValueError):
        raise ValueError(f"image_size and images_per_id must be pairs of integers, got "
                         f"{image_size!r} and {images_per_id!r}") from None
    if H < 16 or W < 8:
        raise ValueError(f"image_size (H, W) must be at least (16, 8), got {image_size!r}")
    if not 1 <= lo <= hi:
        raise ValueError("images_per_id must be (lo, hi) with 1 <= lo <= hi, "
                         f"got {images_per_id!r}")
    return H, W, lo, hi


def _two_captions(person: Person, rng: np.random.Generator, view: str) -> list[str]:
    """Two captions of one image; the second redrawn (up to 10 times) until it differs."""
    caps = [_caption(person, rng, view)]
    for _ in range(10):
        c = _caption(person, rng, view)
        if c != caps[0]:
            break
    caps.append(c)
    return caps


def write_synthetic(out: str | os.PathLike, ids: int = 200, seed: int = 0,
                    image_size: tuple[int, int] = (128, 48),
                    images_per_id: tuple[int, int] = (3, 5), progress: bool = True,
                    overwrite: bool = False) -> Path:
    """Write ``ids`` synthetic people in CUHK-PEDES format under ``out``; returns ``Path(out)``.

    Identities 1..ids are split in contiguous blocks, about 70% train / 10% val / 20% test
    (val and test get at least one each). Each identity has between ``images_per_id[0]`` and
    ``images_per_id[1]`` images (H x W = ``image_size``) with two captions each. The files are a
    pure function of the arguments. ``out/reid_raw.json`` is written last, so an interrupted
    run leaves no annotation file; an existing one raises FileExistsError unless ``overwrite``.
    """
    H, W, lo, hi = _checked(ids, seed, image_size, images_per_id)
    out = Path(out)
    ann = out / "reid_raw.json"
    if ann.exists() and not overwrite:
        raise FileExistsError(f"{ann} already exists (pass overwrite=True to replace it)")
    img_dir = out / "imgs" / "synth"
    img_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:                                  # drop our own stale images only
        for f in img_dir.glob("*.jpg"):
            if re.fullmatch(r"\d+_\d+\.jpg", f.name):
                f.unlink()

    n_train, n_val, _ = _split_counts(ids)
    width = max(4, len(str(ids)))
    kwidth = max(2, len(str(hi)))
    entries = []
    pids = range(1, ids + 1)
    if progress:
        from tqdm import tqdm
        pids = tqdm(pids, desc="synthesizing people", unit="id")
    for pid in pids:
        # One generator per person, per image and per image's captions: any one of them
        # can be regenerated without replaying the others.
        prng = np.random.default_rng([int(seed), pid, 0])
        person = sample_person(prng)
        n_img = int(prng.integers(lo, hi + 1))
        split = "train" if pid <= n_train else "val" if pid <= n_train + n_val else "test"
        for k in range(1, n_img + 1):
            img, view = _render(person, np.random.default_rng([int(seed), pid, k]), (H, W))
            rel = f"synth/{pid:0{width}d}_{k:0{kwidth}d}.jpg"
            img.save(out / "imgs" / rel, format="JPEG", quality=90)
            caps = _two_captions(person, np.random.default_rng([int(seed), pid, k, 1]), view)
            entries.append({"split": split, "captions": caps, "file_path": rel, "id": pid,
                            "processed_tokens": [tokenize_caption(c) for c in caps]})
    tmp = ann.with_name(ann.name + ".tmp")
    tmp.write_text(json.dumps(entries), encoding="utf-8")
    os.replace(tmp, ann)
    return out
