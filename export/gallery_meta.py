"""What a gallery knows of each image besides its embedding set: the camera and the UTC time.

A sidecar file gives them to `tbps gallery --meta FILE`, CSV with a header or JSON lines:

    path,camera,time
    0042_c1s1_000151_01.jpg,c1,2026-11-30T14:05:00Z

`path` as the gallery stores it (relative to the image folder or dataset root); `time` ISO
8601, UTC where it names no offset; an empty camera or time is unknown, as is an image the
sidecar does not list. In the gallery file a camera is an index into its list of camera
names (-1: unknown) and a time int64 milliseconds since the Unix epoch (NO_TIME: unknown),
so a query's filter becomes a boolean mask on the search's device in two comparisons.
torch is imported where tensors are built: the server's torch-free processes (ingest, erasure)
parse times with this module.
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

NO_TIME = -(1 << 63)  # torch.iinfo(torch.int64).min
NO_CAMERA = -1
FIELDS = ("path", "camera", "time")


def parse_time(text: str) -> int:
    """Milliseconds since the Unix epoch of an ISO 8601 time (UTC where it names no offset)."""
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"bad time {text!r}: expected ISO 8601 such as 2026-11-30T14:05:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return round(when.timestamp() * 1000)


def format_time(ms: int) -> str:
    """ISO 8601 UTC of a stored time; "" for NO_TIME."""
    if ms == NO_TIME:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _rows(path: Path):
    """(line number, {path, camera, time}) of a CSV or JSON-lines sidecar."""
    with open(path, newline="") as f:
        if path.suffix.lower() == ".jsonl":
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{line_no}: not JSON ({e.msg})") from None
                    if not isinstance(row, dict):
                        raise ValueError(f"{path}:{line_no}: expected an object with {', '.join(FIELDS)}")
                    yield line_no, row
            return
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise ValueError(f"{path}: a CSV sidecar needs a header naming {', '.join(FIELDS)}")
        for row in reader:
            yield reader.line_num, row


def sidecar_fields(sidecar: str | os.PathLike, paths: list[str]) -> list[tuple[str, str]]:
    """(camera, time) strings of each of `paths` from a sidecar ("": unknown, or not listed). A
    row naming none of `paths`, a repeated path or a bad time is refused, with its line."""
    sidecar = Path(sidecar)
    if sidecar.suffix.lower() not in (".csv", ".jsonl"):
        raise ValueError(f"{sidecar}: a sidecar is .csv or .jsonl")
    if not sidecar.is_file():
        raise FileNotFoundError(f"metadata sidecar not found: {sidecar}")
    index = {p: i for i, p in enumerate(paths)}
    fields: list[tuple[str, str] | None] = [None] * len(paths)
    for line_no, row in _rows(sidecar):
        where = f"{sidecar}:{line_no}"
        path = str(row.get("path") or "")
        if path not in index:
            raise ValueError(f"{where}: {path!r} is not one of the images (paths are relative to their root, "
                             f"such as {paths[0]!r})")
        i = index[path]
        if fields[i] is not None:
            raise ValueError(f"{where}: {path!r} is listed twice")
        when = str(row.get("time") or "").strip()
        if when:
            try:
                parse_time(when)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        fields[i] = (str(row.get("camera") or "").strip(), when)
    return [f or ("", "") for f in fields]


def read_sidecar(sidecar: str | os.PathLike, paths: list[str]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(camera names, camera int32 [N], time int64 [N]) of the gallery items `paths` from a
    sidecar (sidecar_fields)."""
    import torch
    fields = sidecar_fields(sidecar, paths)
    names = list(dict.fromkeys(c for c, _ in fields if c))
    camera = torch.tensor([names.index(c) if c else NO_CAMERA for c, _ in fields], dtype=torch.int32)
    time = torch.tensor([parse_time(t) if t else NO_TIME for _, t in fields], dtype=torch.int64)
    return names, camera, time


def filter_bounds(cameras: list[str], want_cameras=None, since: str | int | None = None,
                  until: str | int | None = None) -> tuple[set[int] | None, int | None, int | None]:
    """(camera indices, lo, hi) of a filter, None where it does not constrain: what both the
    item mask and a segment's camera set and time range are tested against. A camera the
    gallery does not have and a window with since > until are refused. `since`/`until`: ISO
    8601 or milliseconds, both inclusive."""
    want = None
    if want_cameras:
        unknown = sorted(set(want_cameras) - set(cameras))
        if unknown:
            raise ValueError(f"unknown camera(s) {unknown}; the gallery's cameras: "
                             f"{', '.join(cameras) if cameras else 'none (built without --meta)'}")
        want = {cameras.index(c) for c in set(want_cameras)}
    lo, hi = (None if t is None else t if isinstance(t, int) else parse_time(t) for t in (since, until))
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"the time window is empty: since {format_time(lo)} is after until {format_time(hi)}")
    return want, lo, hi


def allowed_items(cameras: list[str], camera: torch.Tensor, time: torch.Tensor, want_cameras=None,
                  since: str | int | None = None, until: str | int | None = None) -> torch.Tensor | None:
    """The bool mask [N] of the items a filter (filter_bounds') keeps (kernels.search's
    `allowed`), on the device of `camera`/`time`; None when nothing is filtered."""
    return item_mask(camera, time, *filter_bounds(cameras, want_cameras, since, until))


def item_mask(camera: torch.Tensor, time: torch.Tensor, want: set[int] | None, lo: int | None,
              hi: int | None) -> torch.Tensor | None:
    """The bool mask of the items that pass filter bounds (filter_bounds'); None when they do not
    constrain. An item of unknown camera or time never passes a filter on it."""
    import torch
    mask = None
    if want is not None:
        mask = torch.isin(camera, torch.tensor(sorted(want), dtype=camera.dtype, device=camera.device))
    if lo is not None or hi is not None:
        window = time != NO_TIME
        if lo is not None:
            window &= time >= lo
        if hi is not None:
            window &= time <= hi
        mask = window if mask is None else mask & window
    return mask


def may_match(cameras: set[int] | frozenset[int], span: tuple[int, int] | None, want: set[int] | None,
              lo: int | None, hi: int | None) -> bool:
    """Whether a range of items with these camera indices and known-time span ((lo, hi) ms,
    None: no known time) can hold one that passes filter bounds: False lets a search skip it."""
    if want is not None and not want & cameras:
        return False
    if lo is None and hi is None:
        return True
    return span is not None and (lo is None or span[1] >= lo) and (hi is None or span[0] <= hi)
