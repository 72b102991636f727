"""The live gallery's costs, each against its baseline in the same run (2 CPU cores).

    .venv/bin/python benchmarks/bench_live_gallery.py [--quick]

1. Filtered search: kernels.search at N = 100k (K = 5, D = 512, top-10, Q in {1, 32}) with a
   filter keeping 1%, 10%, 50% or 100% of the items (random), against the unfiltered search.
2. Additions: LiveGallery.add of B embedding sets a call (durable on return: segment fsync +
   SQLite commit), sets per second, and the time from an add's return to a reader in another
   LiveGallery object having it searchable (refresh + search).
3. Size: on disk and in memory (its tensors) of the live gallery in each of 10 rounds of (add
   1,000 to a base of 1,000, erase half, compact into the next base), next to the base and the
   compacted gallery files: compaction keeps the size flat.

Image decoding and encoding are not in (2): that is the encoder's cost (bench_encoders.py).
Writes benchmarks/results/live_gallery_cpu.json/.png (--quick: *_quick.*, N = 20k).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import kernels
from common import machine_record, median_seconds, pyplot, result_stem, save_plot, write_result
from export.gallery import gallery_bytes, load_gallery, save_gallery
from serving.live_gallery import LiveGallery

K, D, TOP = 5, 512, 10


def unit_sets(n: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, K, D, generator=torch.Generator().manual_seed(seed)), dim=-1)


def bench_filters(n: int) -> list[dict]:
    g = unit_sets(n, 0)
    rows = []
    for nq in (1, 32):
        q = unit_sets(nq, 1)
        base = median_seconds(lambda: kernels.search(q, g, TOP), 5)
        for keep in (0.01, 0.1, 0.5, 1.0):
            allowed = torch.rand(n, generator=torch.Generator().manual_seed(2)) < keep
            s = median_seconds(lambda: kernels.search(q, g, TOP, allowed=allowed), 5)
            rows.append({"N": n, "Q": nq, "kept": keep, "filtered_s": s, "unfiltered_s": base,
                         "filtered_over_unfiltered": s / base})
            print(rows[-1], flush=True)
    return rows


def bench_additions(work: Path, batches=(1, 16, 256)) -> list[dict]:
    base = save_gallery(work / "base.safetensors", unit_sets(1000, 3), torch.arange(1000),
                        [f"b/{i}.jpg" for i in range(1000)], "fp", 16.0, 1.0)
    rows = []
    for b in batches:
        folder = work / f"live_{b}"
        writer, reader = LiveGallery(folder, base), LiveGallery(folder, base, writer=False)
        calls = max(4, 512 // b)
        sets = unit_sets(b, 4)
        start = time.perf_counter()
        for c in range(calls):
            writer.add(sets, [f"n/{c}_{i}.jpg" for i in range(b)])
        add_s = (time.perf_counter() - start) / calls
        visible = []
        for c in range(5):  # ack -> searchable in the reader: a new item found by its own set
            probe = unit_sets(1, 100 + c)
            writer.add(probe, [f"v/{c}.jpg"])
            t0 = time.perf_counter()
            reader.refresh()
            found = reader.search(probe, 1)[1]
            visible.append(time.perf_counter() - t0)
            if int(found) != len(reader) - 1:
                raise RuntimeError(f"the item added last ({len(reader) - 1}) was not found: {int(found)}")
        rows.append({"batch": b, "add_s": add_s, "sets_per_s": b / add_s,
                     "ack_to_searchable_s": sorted(visible)[len(visible) // 2]})
        print(rows[-1], flush=True)
        writer.close(), reader.close()
    return rows


def bench_rounds(work: Path, rounds: int, per_round: int) -> list[dict]:
    base = save_gallery(work / "round0.safetensors", unit_sets(per_round, 5), torch.arange(per_round),
                        [f"r0/{i}.jpg" for i in range(per_round)], "fp", 16.0, 1.0)
    rows = []
    for r in range(1, rounds + 1):
        live = LiveGallery(work / f"live_round{r}", base)
        live.add(unit_sets(per_round, 10 + r), [f"r{r}/{i}.jpg" for i in range(per_round)])
        live.erase(paths=live.paths(range(0, len(live), 2)))
        live_bytes = sum(f.stat().st_size for f in (work / f"live_round{r}").rglob("*") if f.is_file())
        memory = sum(c.numel() * c.element_size() for block in live.blocks for c in block.columns.values())
        nxt = work / f"round{r}.safetensors"
        report = live.compact(nxt)
        live.close()
        g = load_gallery(nxt)
        rows.append({"round": r, "items": len(g), "dropped": report["dropped"],
                     "base_bytes": gallery_bytes(base), "live_folder_bytes": live_bytes,
                     "compacted_bytes": gallery_bytes(nxt), "index_memory_bytes": memory})
        print(rows[-1], flush=True)
        base = nxt
    return rows


def plot(filters: list[dict], additions: list[dict], stem: Path) -> None:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for nq in sorted({r["Q"] for r in filters}):
        rows = [r for r in filters if r["Q"] == nq]
        a.plot([100 * r["kept"] for r in rows], [r["filtered_over_unfiltered"] for r in rows], "o-", label=f"Q={nq}")
    a.axhline(1.0, color="grey", lw=0.8)
    a.set_xscale("log")
    a.set_xlabel("items the filter keeps (%)")
    a.set_ylabel("filtered / unfiltered time")
    a.set_title(f"filtered search, N={filters[0]['N']:,}", fontsize=9)
    a.legend(fontsize=7)
    b.bar([str(r["batch"]) for r in additions], [r["sets_per_s"] for r in additions])
    b.set_xlabel("sets per add call")
    b.set_ylabel("durable additions per second")
    b.set_title("LiveGallery.add (fsync + commit)", fontsize=9)
    save_plot(fig, stem)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = machine_record("machine", "processor", "threads", "torch", "date")
    with tempfile.TemporaryDirectory() as tmp:
        filters = bench_filters(20_000 if args.quick else 100_000)
        additions = bench_additions(Path(tmp))
        rounds = bench_rounds(Path(tmp), 3 if args.quick else 10, 200 if args.quick else 1000)
    stem = result_stem("live_gallery_cpu", args.quick)
    write_result(stem, {"benchmark": "live_gallery_cpu", **machine, "K": K, "D": D, "k": TOP,
                        "filters": filters, "additions": additions, "rounds": rounds})
    plot(filters, additions, stem)


if __name__ == "__main__":
    main()
