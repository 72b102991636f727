"""Readers of the public text-based person search datasets' annotation files.

Three layouts are understood; each dataset root holds one annotation file and an ``imgs/`` folder
that the image paths in it are relative to:

=============  ==========================================  ============  ==================
name           annotation file                             image field   ``split`` values
=============  ==========================================  ============  ==================
cuhk-pedes     ``reid_raw.json``                           ``file_path`` train / val / test
icfg-pedes     ``ICFG-PEDES.json`` (or ``ICFG_PEDES.json``) ``file_path`` train / test
rstpreid       ``data_captions.json``                      ``img_path``  train / val / test
=============  ==========================================  ============  ==================

Every entry is one image: ``id`` (int, the person), ``captions`` (a non-empty list of non-empty
strings), the image path (a string relative to ``imgs/``) and ``split``. Other fields (CUHK-PEDES's
``processed_tokens``, ...) are ignored. ICFG-PEDES's ``imgs/train`` and ``imgs/test`` folders are
*not* used as the split: the ``split`` field is.

Validation set. Where the annotation file has no ``val`` entries (always for ICFG-PEDES, whose
``split`` only knows train / test), training identities are held out: with the N distinct training
pids sorted ascending as p[0] < ... < p[N-1], ``n = max(1, ceil(val_fraction * N))`` (at most N - 1)
and stride ``k = N // n``, the held-out pids are p[k-1], p[2k-1], ..., p[n*k-1] -- every k-th pid,
a pure function of the pid set and ``val_fraction`` (no hashing, no RNG). All images of those
people move from train to val. ``PersonDataset.val_note`` says which rule produced val.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

__all__ = ["DatasetFormatError", "ImageEntry", "PersonDataset", "FORMATS", "detect_format",
           "load_dataset", "pid_map", "caption_samples"]

SPLITS = ("train", "val", "test")


class DatasetFormatError(ValueError):
    """An annotation file that cannot be read, or an entry in it that is malformed."""


@dataclass(frozen=True)
class _Format:
    files: tuple[str, ...]       # accepted annotation file names, in order of preference
    path_field: str
    splits: tuple[str, ...]      # values the ``split`` field may take


FORMATS: dict[str, _Format] = {
    "cuhk-pedes": _Format(("reid_raw.json",), "file_path", ("train", "val", "test")),
    "icfg-pedes": _Format(("ICFG-PEDES.json", "ICFG_PEDES.json"), "file_path", ("train", "test")),
    "rstpreid": _Format(("data_captions.json",), "img_path", ("train", "val", "test")),
}


@dataclass(frozen=True)
class ImageEntry:
    """One image: absolute path, the dataset's original person id, its captions, and its index
    within its split."""
    path: Path
    pid: int
    captions: tuple[str, ...]
    image_id: int


@dataclass
class PersonDataset:
    name: str                    # "cuhk-pedes" | "icfg-pedes" | "rstpreid"
    root: Path
    train: list[ImageEntry] = field(default_factory=list)
    val: list[ImageEntry] = field(default_factory=list)
    test: list[ImageEntry] = field(default_factory=list)
    val_note: str = ""           # how val was obtained

    def split(self, name: str) -> list[ImageEntry]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}: expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def __repr__(self) -> str:
        return (f"PersonDataset({self.name!r}, root={str(self.root)!r}, train={len(self.train)}, "
                f"val={len(self.val)}, test={len(self.test)} images)")


def _check_root(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dataset root {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"dataset root {root} is not a directory")
    return root


def _annotation_file(root: Path) -> tuple[str, Path]:
    found = []
    for name, fmt in FORMATS.items():
        for fname in fmt.files:
            if (root / fname).is_file():
                found.append((name, root / fname))
                break                                    # first accepted name wins (ICFG)
    if not found:
        expected = ", ".join(f"{f} ({name})" for name, fmt in FORMATS.items() for f in fmt.files)
        raise FileNotFoundError(f"no annotation file in {root}: expected one of {expected}")
    if len(found) > 1:
        raise DatasetFormatError(f"{root} holds annotation files of several datasets "
                                 f"({', '.join(p.name for _, p in found)}): keep one per root")
    return found[0]


def detect_format(root: str | os.PathLike) -> str:
    """The dataset name ("cuhk-pedes", "icfg-pedes" or "rstpreid") by which annotation file
    ``root`` holds. FileNotFoundError (listing the expected names) when none does."""
    return _annotation_file(_check_root(root))[0]


def _short(value, limit: int = 80) -> str:
    r = repr(value)
    return r if len(r) <= limit else r[:limit - 3] + "..."


def _parse_entry(i: int, raw, fmt: _Format, ann: Path, imgs: Path, check_images: bool):
    def bad(fld: str, why: str):
        return DatasetFormatError(f"{ann}: entry {i}: field {fld!r}: {why}")

    if not isinstance(raw, dict):
        raise DatasetFormatError(f"{ann}: entry {i}: expected an object, got {type(raw).__name__}")
    for fld in ("id", "captions", fmt.path_field, "split"):
        if fld not in raw:
            raise bad(fld, "missing")
    pid = raw["id"]
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise bad("id", f"expected an integer, got {_short(pid)}")
    caps = raw["captions"]
    if not isinstance(caps, list) or not caps:
        raise bad("captions", f"expected a non-empty list of non-empty strings, got {_short(caps)}")
    for j, c in enumerate(caps):
        if not isinstance(c, str):
            raise bad("captions", f"caption {j} must be a string, got {_short(c)}")
    # Blank captions occur in real copies of the datasets: they are dropped (load_dataset
    # warns), and only an entry left with none is an error.
    dropped = sum(1 for c in caps if not c.strip())
    caps = [c for c in caps if c.strip()]
    if not caps:
        raise bad("captions", "every caption is blank")
    rel = raw[fmt.path_field]
    if not isinstance(rel, str) or not rel.strip():
        raise bad(fmt.path_field, f"expected a non-empty string path, got {_short(rel)}")
    split = raw["split"]
    if split not in fmt.splits:
        raise bad("split", f"expected one of {', '.join(fmt.splits)}, got {_short(split)}")
    path = imgs / rel
    if check_images and not path.is_file():
        raise bad(fmt.path_field, f"image {path} does not exist")
    return split, path, pid, tuple(caps), dropped


def _held_out_pids(train_pids: Sequence[int], val_fraction: float) -> list[int]:
    """Every k-th training pid in ascending order (see the module docstring)."""
    pids = sorted(set(train_pids))
    n_ids = len(pids)
    if n_ids < 2:
        return []
    n = min(n_ids - 1, max(1, math.ceil(val_fraction * n_ids - 1e-9)))
    k = n_ids // n
    return [pids[(j + 1) * k - 1] for j in range(n)]


def load_dataset(root: str | os.PathLike, val_fraction: float = 0.05,
                 check_images: bool = True) -> PersonDataset:
    """Read the dataset under ``root`` (format detected by its annotation file).

    Every entry is validated (DatasetFormatError naming the file, the entry index and the field);
    with ``check_images`` every image must exist. ``val_fraction`` (0 < f < 1) is only used when
    the annotation file has no val entries: then training identities are held out as described in
    the module docstring. Image paths are absolute; ``image_id`` is the index within the split.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    root = _check_root(root).resolve()
    name, ann = _annotation_file(root)
    fmt = FORMATS[name]
    try:
        with open(ann, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{ann}: invalid JSON at line {e.lineno} column {e.colno} "
                                 f"(char {e.pos}): {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DatasetFormatError(f"{ann}: not UTF-8 text (byte {e.start}): {e.reason}") from None
    if not isinstance(data, list):
        raise DatasetFormatError(f"{ann}: expected a JSON list of entries at the top level, "
                                 f"got {type(data).__name__}")
    imgs = root / "imgs"
    if check_images and data and not imgs.is_dir():
        raise DatasetFormatError(f"{ann}: the images folder {imgs} does not exist")

    parsed: dict[str, list[tuple[Path, int, tuple[str, ...]]]] = {s: [] for s in SPLITS}
    blank = []
    for i, raw in enumerate(data):
        split, path, pid, caps, dropped = _parse_entry(i, raw, fmt, ann, imgs, check_images)
        parsed[split].append((path, pid, caps))
        blank += [i] * dropped
    if blank:
        shown = ", ".join(map(str, blank[:10])) + (", ..." if len(blank) > 10 else "")
        warnings.warn(f"{ann}: dropped {len(blank)} blank caption(s) (entries {shown})", stacklevel=2)

    if parsed["val"]:
        val_note = f"the dataset's own val split ({ann.name})"
    else:
        held = _held_out_pids([p for _, p, _ in parsed["train"]], val_fraction)
        if held:
            held_set = set(held)
            n_ids = len({p for _, p, _ in parsed["train"]})
            parsed["val"] = [e for e in parsed["train"] if e[1] in held_set]
            parsed["train"] = [e for e in parsed["train"] if e[1] not in held_set]
            shown = ", ".join(map(str, held[:8])) + (", ..." if len(held) > 8 else "")
            val_note = (f"{ann.name} has no val split: held out {len(held)} of {n_ids} training "
                        f"identities (val_fraction={val_fraction}: every {n_ids // len(held)}-th "
                        f"pid in ascending order; pids {shown})")
        else:
            val_note = f"{ann.name} has no val split and too few training identities to hold out: val is empty"

    splits = {s: [ImageEntry(path, pid, caps, k) for k, (path, pid, caps) in enumerate(parsed[s])]
              for s in SPLITS}
    return PersonDataset(name, root, splits["train"], splits["val"], splits["test"], val_note)


def pid_map(entries: Sequence[ImageEntry]) -> dict[int, int]:
    """Original person id -> class label 0..C-1, in ascending order of original id."""
    return {pid: label for label, pid in enumerate(sorted({e.pid for e in entries}))}


def caption_samples(entries: Sequence[ImageEntry]) -> list[tuple[int, str, int]]:
    """One sample per caption: (index of its image in ``entries``, caption, original pid)."""
    return [(i, c, e.pid) for i, e in enumerate(entries) for c in e.captions]
