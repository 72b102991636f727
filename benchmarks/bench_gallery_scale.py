"""A camera archive's gallery at scale, through the live gallery the server searches: build,
open, filtered and unfiltered search, ingest, erasure and compaction, with their peak memory.

    .venv/bin/python benchmarks/bench_gallery_scale.py --items 10000000 --dim 8 [--slots 1 | --serve] --out DIR

Items: random unit sets [K+1 = slots + 1, D] float16 from 16 cameras over 30 days, laid out as
an archive sorts (camera, then time), with paths shaped like one
(cam07/2026-11-30/14/track_000123_f0045.jpg). Steps, in one process, each with its own peak RSS
(VmHWM, reset before the step through /proc/self/clear_refs):
  build    GalleryWriter, streamed in batches of 65,536 (never the gallery in memory)
  live     the live store beside it (LiveStore.create: what `tbps repo` does once)
  open     LiveGallery as a CPU gallery_search opens it (sets in fp32; per-zone cameras and times)
  search   one query, k = 10, unfiltered and filtered by one camera and one hour: seconds and the
           bytes of sets each reads (LiveGallery.plan)
  ingest   --ingest items in calls of 1,000 (durable adds), then searched: peak RSS over `open`
  erase    1,000 items by path
  compact  the live gallery written as a new gallery, a block at a time
With --serve, a one-epoch tiny model of embedding width --dim is trained first (its set size
replaces --slots), the gallery carries its fingerprint, and then a real Triton server serves it:
  served_repo, served_ready   tbps repo's write_repository, and the server up to READY
  served_search[_filtered]    a text query through person_search, unfiltered and one camera-hour
  served_ingest, served_erase a synthetic image ingested (then found by LIKE in its hour), erased
  served_compact              tbps compact of the repository
The gallery stays in DIR/gallery (servable with DIR/model/onnx: tbps repo DIR/model/onnx
DIR/gallery --out REPO). Also, on --overhead-items items of [6, 512] fp32 (the CPU
server's), the block search (LiveGallery.search) against one kernels.search over the same
sets, same run: what the blocks cost where nothing is skipped. Writes
benchmarks/results/gallery_scale.json/.png.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import machine_record, median_seconds, pyplot, result_stem, save_plot, write_result

BATCH = 1 << 16
CAMERAS = [f"cam{i:02d}" for i in range(16)]
HOURS = 30 * 24
START = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
HOUR_MS = 3_600_000


def peak_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current RSS


def rss_mb_of(status: Path, field: str = "VmRSS") -> float:
    line = next(l for l in status.read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def rss_mb(field: str) -> float:
    return rss_mb_of(Path("/proc/self/status"), field)


def step(rows: list, name: str, fn, **extra):
    """Run fn as one measured step: seconds, RSS before, peak RSS during."""
    peak_reset()
    before, start = rss_mb("VmRSS"), time.perf_counter()
    out = fn()
    rows.append({"step": name, "seconds": time.perf_counter() - start, "rss_before_mb": before,
                 "peak_rss_mb": rss_mb("VmHWM"), **extra})
    print(rows[-1], flush=True)
    return out


def archive(a: int, b: int, n: int, slots: int, dim: int):
    """Items a .. b - 1 of n: camera-major, then time (each camera-hour holds an equal share)."""
    rng = np.random.default_rng(a)
    sets = rng.standard_normal((b - a, slots + 1, dim), dtype=np.float32)
    sets /= np.linalg.norm(sets, axis=-1, keepdims=True)
    scaled = np.arange(a, b, dtype=np.int64) * (len(CAMERAS) * HOURS * HOUR_MS) // n  # < 2**63 below 2e8 items
    slot = scaled // HOUR_MS  # the camera-hour of each item, in order
    camera, hour = slot // HOURS, slot % HOURS
    time_ms = int(START.timestamp() * 1000) + hour * HOUR_MS + scaled % HOUR_MS
    paths = [f"{CAMERAS[c]}/{(START + dt.timedelta(hours=int(h))):%Y-%m-%d/%H}/track_{i // 50:06d}_f{i % 50:04d}.jpg"
             for i, c, h in zip(range(a, b), camera.tolist(), hour.tolist())]
    return sets.astype(np.float16), np.arange(a, b) // 50, paths, camera.astype(np.int32), time_ms


def build(out: Path, n: int, slots: int, dim: int, model: dict) -> None:
    from export.gallery_writer import GalleryWriter
    with GalleryWriter(out, (slots + 1, dim), model["fingerprint"], model["alpha"], model["weight"], root="/archive",
                       cameras=CAMERAS) as w:
        for a in range(0, n, BATCH):
            sets, ids, paths, camera, time_ms = archive(a, min(a + BATCH, n), n, slots, dim)
            w.add(sets, ids, paths, camera=camera, time=time_ms)


DAY = START + dt.timedelta(days=14, hours=14)
ONE_HOUR = {"cameras": ["cam03"], "since": f"{DAY:%Y-%m-%dT%H:%M:%SZ}",
            "until": f"{DAY + dt.timedelta(minutes=59, seconds=59):%Y-%m-%dT%H:%M:%SZ}"}


def plan_bytes(live, **filters) -> int:
    row = live.blocks[0].view("sets")[0].numel() * live.blocks[0].view("sets").element_size()
    return sum((z - a) * row for _, a, z, _ in live.plan(**filters))


def scale(work: Path, n: int, slots: int, dim: int, ingest: int, model: dict) -> dict:
    from export.gallery import gallery_bytes, load_gallery
    from serving.live_gallery import CHUNK_ROWS, ZONE_ROWS, LiveGallery, start_live
    rows = []
    gallery = work / "gallery"
    step(rows, "build", lambda: build(gallery, n, slots, dim, model), items=n)
    disk = gallery_bytes(gallery)
    step(rows, "live", lambda: start_live(work / "live", load_gallery(gallery, with_sets=False)).close())
    live = step(rows, "open", lambda: LiveGallery(work / "live", gallery, dtype=torch.float32))  # the CPU server's
    query = torch.from_numpy(archive(0, 1, n, slots, dim)[0]).float()
    for name, filters in (("search", {}), ("search_filtered", ONE_HOUR)):
        live.search(query, 10, **filters)  # pages in: the steady state is measured
        step(rows, name, lambda: median_seconds(lambda: live.search(query, 10, **filters), 3),
             bytes_read=plan_bytes(live, **filters), hits=int(live.search(query, 10, **filters)[1].shape[1]))
    rows[-1]["share_of_unfiltered"] = rows[-1]["bytes_read"] / rows[-2]["bytes_read"]

    def add_all():
        for c in range(0, ingest, 1000):
            b = min(1000, ingest - c)
            sets = torch.from_numpy(archive(c, c + b, n, slots, dim)[0])
            live.add(sets, [f"ingest/{c + i:08d}.jpg" for i in range(b)], cameras=["cam99"] * b)
        return live.search(query, 10)
    chunk = CHUNK_ROWS * (slots + 1) * dim * 4
    step(rows, "ingest", add_all, items=ingest, chunk_bytes=chunk)
    rows[-1]["peak_over_open_mb"] = rows[-1]["peak_rss_mb"] - rows[-1]["rss_before_mb"]
    step(rows, "erase", lambda: live.erase(paths=live.paths(range(0, 1000 * 97, 97))), items=1000)
    report = step(rows, "compact", lambda: live.compact(work / "compacted"))
    rows[-1].update(report)
    rows[-1]["gallery"] = str(work / "compacted")
    live.close()
    sets_bytes = n * (slots + 1) * dim * 4  # held in fp32, as the CPU server holds them
    return {"items": n, "slots": slots, "dim": dim, "zone_rows": ZONE_ROWS, "chunk_rows": CHUNK_ROWS, **model,
            "disk_bytes": disk, "disk_bytes_per_item": disk / n, "sets_bytes": sets_bytes, "steps": rows}


def tree_rss_mb(pid: int) -> float:
    """VmRSS of a process and its descendants (tritonserver and its python backend stubs)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grew = {pid}, True
    while grew:
        more = {p for p, parent in parents.items() if parent in tree} - tree
        tree, grew = tree | more, bool(more)
    total = 0.0
    for p in tree:
        try:
            total += rss_mb_of(Path(f"/proc/{p}/status"))
        except (OSError, StopIteration):
            pass
    return total


def served(work: Path, export: Path, data: Path) -> list[dict]:
    """The archive gallery through a real Triton server: repository, READY, text queries
    (unfiltered and one camera-hour), an ingest found by its own image, an erasure, compaction."""
    from serving.client import Filter, SearchClient
    from serving.launch import TritonServer
    from serving.repository import compact_repository, write_repository
    rows = []
    repo = step(rows, "served_repo", lambda: write_repository(export, work / "gallery", work / "repo"))
    server = TritonServer(repo)
    step(rows, "served_ready", server.start)
    try:
        rows[-1]["server_rss_mb"] = tree_rss_mb(server.process.pid)
        with SearchClient(server.grpc_url) as client:
            text = "a man in a grey hoodie, dark jeans and a black backpack"
            hour = Filter(tuple(ONE_HOUR["cameras"]), ONE_HOUR["since"], ONE_HOUR["until"])
            for name, flt in (("served_search", None), ("served_search_filtered", hour)):
                client.search(text, k=10, filter=flt)
                step(rows, name, lambda: median_seconds(lambda: client.search(text, k=10, filter=flt), 3),
                     hits=len(client.search(text, k=10, filter=flt)[0]))
            image = next(iter(sorted(data.rglob("*.jpg")))).read_bytes()
            (added,) = step(rows, "served_ingest", lambda: client.ingest([image], ["ingest/query.jpg"],
                                                                         cameras=["cam03"], times=[ONE_HOUR["since"]]))
            found = client.like([added.index], k=1, filter=hour)[0]
            rows[-1].update(index=added.index, found_by_its_image_in_the_hour=found[0].index == added.index)
            erased = step(rows, "served_erase", lambda: client.delete(paths=["ingest/query.jpg"]))
            rows[-1]["erased"] = erased
            rows[-1]["server_rss_mb"] = tree_rss_mb(server.process.pid)
    finally:
        server.stop()
    report = step(rows, "served_compact", lambda: compact_repository(repo))
    rows[-1].update({k: v for k, v in report.items() if isinstance(v, (int, float, str))})
    return rows


def overhead(work: Path, n: int) -> dict:
    """The block search against one kernels.search, on the same fp32 sets (nothing skipped)."""
    import kernels
    from export.gallery import save_gallery
    from serving.live_gallery import LiveGallery
    sets = torch.nn.functional.normalize(torch.randn(n, 6, 512, generator=torch.Generator().manual_seed(0)), dim=-1)
    g = save_gallery(work / "overhead", sets, torch.arange(n), [f"o/{i}.jpg" for i in range(n)], "o", 16.0, 1.0)
    live = LiveGallery(work / "overhead_live", g, dtype=torch.float32)
    whole = live.column("sets")
    out = {}
    for q in (1, 32):
        query = sets[:q]
        base = median_seconds(lambda: kernels.search(query, whole, 10), 5)
        blocks = median_seconds(lambda: live.search(query, 10), 5)
        out[f"Q{q}"] = {"kernels_search_s": base, "live_search_s": blocks, "ratio": blocks / base}
        print({"overhead": n, **out[f"Q{q}"]}, flush=True)
    live.close()
    return {"items": n, **out}


def plot(result: dict, stem: Path) -> None:
    plt = pyplot()
    steps = result["scale"]["steps"]
    fig, (ax_t, ax_m, ax_b) = plt.subplots(1, 3, figsize=(15, 4.5))
    names = [s["step"] for s in steps]
    timed = steps + result.get("served", [])  # served_*: through the Triton server
    ax_t.bar([s["step"] for s in timed], [s["seconds"] for s in timed],
             color=["C1" if s["step"].startswith("served") else "C0" for s in timed])
    ax_t.set_ylabel("seconds")
    ax_t.set_yscale("log")
    ax_m.bar(names, [s["peak_rss_mb"] for s in steps], label="peak RSS")
    ax_m.bar(names, [s["rss_before_mb"] for s in steps], color="0.7", label="RSS before")
    ax_m.axhline(result["scale"]["sets_bytes"] / 2**20, color="C3", ls="--", label="the gallery's sets (fp32)")
    ax_m.set_ylabel("MB")
    ax_m.legend(fontsize=7)
    search = {s["step"]: s["bytes_read"] for s in steps if "bytes_read" in s}
    ax_b.bar(list(search), [v / 2**20 for v in search.values()])
    ax_b.set_ylabel("MB of sets read by one query")
    ax_b.set_yscale("log")
    for ax in (ax_t, ax_m, ax_b):
        ax.tick_params(axis="x", labelsize=7)
        plt.setp(ax.get_xticklabels(), rotation=60, ha="right")
    fig.suptitle(f"live gallery of {result['scale']['items']:,} archive items "
                 f"([{result['scale']['slots'] + 1}, {result['scale']['dim']}] sets, fp16 on disk, fp32 in memory)")
    save_plot(fig, stem)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=10_000_000)
    p.add_argument("--slots", type=int, default=1, help="K: a set is [K+1, D]")
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--ingest", type=int, default=20_000)
    p.add_argument("--overhead-items", type=int, default=20_000)
    p.add_argument("--out", type=Path, help="folder kept with the gallery (default: a temporary one, removed)")
    p.add_argument("--serve", action="store_true", help="a tiny model of embedding width --dim (its set size "
                   "replaces --slots) trained first, and the gallery then served by a real Triton server")
    p.add_argument("--quick", action="store_true", help="a small run: results under benchmarks/results/quick")
    args = p.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="tbps-gallery-scale-") as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = {"command": " ".join(["benchmarks/bench_gallery_scale.py", *sys.argv[1:]]),
                  **machine_record("machine", "processor", "threads", "torch", "python", "started_utc")}
        model, slots = {"fingerprint": "bench-scale", "alpha": 16.0, "weight": 1.0}, args.slots
        if args.serve:
            from tiny_runs import tiny_model
            export, ckpt, data = tiny_model(work / "model", embed_dim=args.dim)
            model, slots = {"fingerprint": ckpt.fingerprint, **ckpt.model.score_params}, ckpt.model.set_size - 1
        result["scale"] = scale(work, args.items, slots, args.dim, args.ingest, model)
        if args.serve:
            result["served"] = served(work, export, data)
        result["overhead"] = overhead(work, args.overhead_items)
    stem = result_stem("gallery_scale", args.quick)
    write_result(stem, result)
    plot(result, stem)
    print(f"wrote {stem}.json/.png")


if __name__ == "__main__":
    main()
