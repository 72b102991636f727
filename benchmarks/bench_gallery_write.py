"""Writing and reopening a gallery past version 2's cap: the version-3 directory at N items
against the version-2 file, in the same run.

    .venv/bin/python benchmarks/bench_gallery_write.py [--items 3000000] [--baseline-items 2000000]
                                                       [--slots 1] [--dim 8] [--out DIR]

Items: random unit sets [K+1 = slots + 1, D] float16, person ids, a camera of 16 and a time, and
37-character paths shaped like a camera archive (cam07/2026-11-30/14/t0012345_f045.jpg).
Version 3: streamed through GalleryWriter in batches of 65,536 (never the gallery in memory),
then opened as the server opens it (load_gallery: manifest, item columns and digests; sets
memory-mapped), the last path and the last segment's sets read. Version 2 (the single
safetensors file, every path in its header): written as it was (save_file of the whole
gallery) and opened with load_gallery at --baseline-items, then tried at --items (safetensors
refuses a header over 100 MB: 'header too large').

Each phase runs in its own process, so its peak RSS (ru_maxrss) is its own; the RSS after the
imports is recorded beside it. Writes benchmarks/results/gallery_write.json/.png.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import machine_record, pyplot, result_stem, save_plot, write_result

BATCH = 1 << 16
CAMERAS = [f"cam{i:02d}" for i in range(16)]
DAY_MS, START_MS = 86_400_000, 1_764_460_800_000  # 2025-11-30 00:00 UTC; times over 30 days


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def batch(a: int, b: int, slots: int, dim: int):
    """Items a .. b - 1 (a batch: seeded by its first item, so every phase writes the same)."""
    rng = np.random.default_rng(a)
    sets = rng.standard_normal((b - a, slots + 1, dim), dtype=np.float32)
    sets /= np.linalg.norm(sets, axis=-1, keepdims=True)
    camera = (np.arange(a, b) % 16).astype(np.int32)
    time_ms = START_MS + rng.integers(0, 30 * DAY_MS, b - a)
    paths = [f"{CAMERAS[i % 16]}/2026-11-30/14/t{i:07d}_f045.jpg" for i in range(a, b)]
    return sets.astype(np.float16), np.arange(a, b) // 4, paths, camera, time_ms


def phase_v3_write(out: Path, n: int, slots: int, dim: int) -> dict:
    from export.gallery_writer import GalleryWriter
    rss0, start = peak_rss_mb(), time.perf_counter()
    with GalleryWriter(out, (slots + 1, dim), "fp", 16.0, 1.0, root="/archive", cameras=CAMERAS) as w:
        for a in range(0, n, BATCH):
            sets, ids, paths, camera, time_ms = batch(a, min(a + BATCH, n), slots, dim)
            w.add(sets, ids, paths, camera=camera, time=time_ms)
    return {"seconds": time.perf_counter() - start, "rss_after_imports_mb": rss0, "peak_rss_mb": peak_rss_mb()}


def phase_v3_open(out: Path, n: int, slots: int, dim: int) -> dict:
    import torch
    from export.gallery import gallery_bytes, load_gallery
    rss0, start = peak_rss_mb(), time.perf_counter()
    g = load_gallery(out, "fp")
    opened = time.perf_counter() - start
    last = g.segments[-1].sets()[-1]
    expect = batch((n - 1) // BATCH * BATCH, n, slots, dim)  # the last batch written
    assert len(g) == n and g.paths[n - 1] == expect[2][-1] and torch.equal(last, torch.from_numpy(expect[0][-1]))
    return {"seconds": opened, "seconds_with_last_item": time.perf_counter() - start, "rss_after_imports_mb": rss0,
            "peak_rss_mb": peak_rss_mb(), "segments": len(g.segments), "bytes": gallery_bytes(out),
            "bytes_per_item": gallery_bytes(out) / n}


def phase_v2_write(out: Path, n: int, slots: int, dim: int) -> dict:
    import torch
    from safetensors.torch import save_file
    rss0, start = peak_rss_mb(), time.perf_counter()
    parts = [batch(a, min(a + BATCH, n), slots, dim) for a in range(0, n, BATCH)]
    tensors = {name: torch.from_numpy(np.concatenate([p[i] for p in parts])) for i, name in
               ((0, "sets"), (1, "ids"), (3, "camera"), (4, "time"))}
    paths = [p for part in parts for p in part[2]]
    metadata = {"format": "tbps-gallery", "version": "2", "fingerprint": "fp", "alpha": "16.0", "weight": "1.0",
                "paths": json.dumps(paths), "root": "/archive", "cameras": json.dumps(CAMERAS)}
    try:
        save_file(tensors, out, metadata=metadata)
        error = None
    except Exception as e:  # noqa: BLE001 (what version 2 says at this size is the result)
        error = f"{type(e).__name__}: {e}"
    return {"seconds": time.perf_counter() - start, "rss_after_imports_mb": rss0, "peak_rss_mb": peak_rss_mb(),
            "metadata_bytes": len(json.dumps(metadata)), "error": error}


def phase_v2_open(out: Path, n: int, slots: int, dim: int) -> dict:
    from export.gallery import load_gallery
    rss0, start = peak_rss_mb(), time.perf_counter()
    g = load_gallery(out, "fp")
    assert len(g) == n
    return {"seconds": time.perf_counter() - start, "rss_after_imports_mb": rss0, "peak_rss_mb": peak_rss_mb(),
            "bytes": out.stat().st_size, "bytes_per_item": out.stat().st_size / n}


PHASES = {f.__name__[len("phase_"):]: f for f in (phase_v3_write, phase_v3_open, phase_v2_write, phase_v2_open)}


def run_phase(name: str, out: Path, n: int, slots: int, dim: int) -> dict:
    """One phase in a fresh process: its peak RSS is its own."""
    done = subprocess.run([sys.executable, __file__, "--phase", name, "--target", str(out), "--items", str(n),
                           "--slots", str(slots), "--dim", str(dim)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"phase {name} failed:\n{done.stderr[-3000:]}")
    row = {"phase": name, "items": n, **json.loads(done.stdout.strip().splitlines()[-1])}
    print(row, flush=True)
    return row


def plot(rows: list[dict], stem: Path) -> None:
    plt = pyplot()
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    labels = [f"{r['phase']}\n{r['items'] / 1e6:g}M" + ("\nFAILED" if r.get("error") else "") for r in rows]
    ax_t.bar(labels, [r["seconds"] for r in rows], color=["C3" if r.get("error") else "C0" for r in rows])
    ax_t.set_ylabel("wall seconds")
    ax_m.bar(labels, [r["peak_rss_mb"] for r in rows], color=["C3" if r.get("error") else "C0" for r in rows])
    ax_m.bar(labels, [r["rss_after_imports_mb"] for r in rows], color="0.7", label="after imports")
    ax_m.set_ylabel("peak RSS (MB)")
    ax_m.legend()
    for ax in (ax_t, ax_m):
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle("gallery write and open: version 3 (directory) vs version 2 (one safetensors file)")
    save_plot(fig, stem)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=3_000_000)
    p.add_argument("--baseline-items", type=int, default=2_000_000, help="version 2 at this size (it still loads)")
    p.add_argument("--slots", type=int, default=1, help="K: a set is [K+1, D]")
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--out", type=Path, help="folder for the galleries (default: a temporary one, removed)")
    p.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    p.add_argument("--target", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        print(json.dumps(PHASES[args.phase](args.target, args.items, args.slots, args.dim)))
        return
    with tempfile.TemporaryDirectory(prefix="tbps-gallery-write-", dir=args.out) as tmp:
        work = Path(tmp)
        rows = [run_phase("v3_write", work / "v3", args.items, args.slots, args.dim),
                run_phase("v3_open", work / "v3", args.items, args.slots, args.dim),
                run_phase("v2_write", work / "v2_base.safetensors", args.baseline_items, args.slots, args.dim),
                run_phase("v2_open", work / "v2_base.safetensors", args.baseline_items, args.slots, args.dim),
                run_phase("v2_write", work / "v2.safetensors", args.items, args.slots, args.dim)]
    record = {"command": " ".join(["benchmarks/bench_gallery_write.py", *sys.argv[1:]]),
              **machine_record("machine", "processor", "threads", "torch", "python", "started_utc"),
              "slots": args.slots, "dim": args.dim, "batch": BATCH, "rows": rows}
    stem = result_stem("gallery_write")
    write_result(stem, record)
    plot(rows, stem)
    print(f"wrote {stem}.json/.png")


if __name__ == "__main__":
    main()
