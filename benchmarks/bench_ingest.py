"""The live gallery through the server: ingest throughput, the time from an acknowledgement to a
query that finds the image, and text-query latency idle vs while images are ingested.

    .venv/bin/python benchmarks/bench_ingest.py [--quick] [--gallery-size 20000] [--results benchmarks/results]

One local Triton server (the portable repository of serving/repository.py) over a tiny ESA
model and a gallery of --gallery-size random sets (benchmarks/tiny_runs.py's served_model).
- ingest: `SearchClient.ingest` of synthetic JPEG crops, B images a call (B = 1, 8, 32): each
  call decodes, encodes and durably appends (an fsync) on the server; images/s end to end.
- acknowledged -> searchable: after each acknowledged single-image ingest, the same image is
  searched for (`search_images`, k=1, filtered to a camera only it has) at once; the ms until
  it is the hit, and how often the first query already found it.
- text queries (serving/load.py, 4 clients) idle, then while one client ingests 8 images a
  call without pause: p50/p99 and q/s of both, the ratio against idle measured in the same run.
Writes benchmarks/results/ingest_cpu[_quick].json and .png.
"""
from __future__ import annotations

import argparse
import itertools
import tempfile
import threading
import time
from pathlib import Path

from common import RESULTS, machine_record, percentiles_ms, pyplot, result_stem, save_plot, write_result
from tiny_runs import served_model

CAPTIONS = ["a woman in a red coat with a black handbag", "a man in a grey hoodie, dark jeans and a backpack",
            "a young man wearing a white t-shirt and blue shorts", "a person in a black jacket"]
BATCHES = (1, 8, 32)


def images(data: Path) -> list[bytes]:
    from trainer.data.formats import load_dataset
    d = load_dataset(data)
    return [e.path.read_bytes() for e in d.train + d.val + d.test]


def ingest_throughput(client, crops: list[bytes], batch: int, seconds: float, names) -> dict:
    done, calls, start = 0, 0, time.perf_counter()
    source = itertools.cycle(crops)
    while time.perf_counter() - start < seconds:
        chunk = [next(source) for _ in range(batch)]
        results = client.ingest(chunk, [next(names) for _ in chunk])
        done += sum(r.index is not None for r in results)
        calls += 1
    elapsed = time.perf_counter() - start
    return {"batch": batch, "images": done, "calls": calls, "seconds": elapsed, "images_per_s": done / elapsed}


def ack_to_searchable(client, crops: list[bytes], count: int, names) -> dict:
    """Each probe image gets a camera of its own, so the filtered query can only find it (the
    crops were ingested before under other names: unfiltered, an older copy ranks first)."""
    from serving.client import Filter
    waits, first_hit, missed = [], 0, 0
    for n, image in enumerate(crops[:count]):
        camera = f"probe-{n}"
        (added,) = client.ingest([image], [next(names)], cameras=[camera])
        acked = time.perf_counter()
        for attempt in range(100):
            hits = client.search_images(image, k=1, filter=Filter((camera,)))[0]
            if hits and hits[0].index == added.index:
                waits.append(time.perf_counter() - acked)
                first_hit += attempt == 0
                break
        else:
            missed += 1
    return {"images": count, "found_at_first_query": first_hit / count, "never_found": missed,
            **percentiles_ms(waits)}


def queries_while_ingesting(url: str, crops: list[bytes], seconds: float, names) -> dict:
    from serving.client import SearchClient
    from serving.load import run_load
    idle = run_load(url, CAPTIONS, concurrency=4, duration=seconds)
    stop, ingested = threading.Event(), []

    def ingest():
        with SearchClient(url) as client:
            source = itertools.cycle(crops)
            while not stop.is_set():
                chunk = [next(source) for _ in range(8)]
                ingested.extend(client.ingest(chunk, [next(names) for _ in chunk]))
    worker = threading.Thread(target=ingest)
    worker.start()
    try:
        busy = run_load(url, CAPTIONS, concurrency=4, duration=seconds)
    finally:
        stop.set()
        worker.join()
    rows = []
    for name, r in (("idle", idle), ("ingesting", busy)):
        rows.append({"setup": name, **{k: v for k, v in r.items() if k != "errors"},
                     "p50_vs_idle": r["p50_ms"] / idle["p50_ms"], "p99_vs_idle": r["p99_ms"] / idle["p99_ms"]})
    rows[1]["images_ingested"] = sum(r.index is not None for r in ingested)
    return {"rows": rows}


def plot(result: dict, stem: Path) -> None:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    ingest = result["ingest"]
    a.bar([str(r["batch"]) for r in ingest], [r["images_per_s"] for r in ingest], color="#4c72b0")
    a.set(xlabel="images per ingest call", ylabel="images / s (durable, searchable)", title="ingest through the server")
    rows = result["queries"]["rows"]
    x = range(len(rows))
    b.bar([i - 0.2 for i in x], [r["p50_ms"] for r in rows], 0.4, label="p50")
    b.bar([i + 0.2 for i in x], [r["p99_ms"] for r in rows], 0.4, label="p99")
    b.set_xticks(list(x), [r["setup"] for r in rows])
    b.set(ylabel="text query latency (ms), 4 clients", title="queries idle vs while ingesting")
    b.legend()
    fig.suptitle(f"live gallery through Triton, N = {result['gallery_size']:,}, 2 CPU cores")
    save_plot(fig, stem)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 s per measurement, a 2,000-image gallery")
    parser.add_argument("--gallery-size", type=int, default=None, help="default 20000 (quick: 2000)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON and plot")
    args = parser.parse_args()
    from serving.client import SearchClient
    from serving.launch import TritonServer
    from serving.repository import write_repository
    size = args.gallery_size or (2_000 if args.quick else 20_000)
    seconds = 2.0 if args.quick else args.seconds
    names = (f"ingested/{i:08d}.jpg" for i in itertools.count())
    with tempfile.TemporaryDirectory(prefix="tbps-bench-ingest-") as tmp:
        export, gallery, data = served_model(Path(tmp), size)
        crops = images(data)
        with TritonServer(write_repository(export, gallery, Path(tmp) / "repo")) as server, \
                SearchClient(server.grpc_url) as client:
            client.ingest(crops[:2], [next(names), next(names)])  # warm-up: the channel, the models' first call
            ingest = []
            for batch in BATCHES:
                ingest.append(ingest_throughput(client, crops, batch, seconds, names))
                print(f"ingest B={batch:3d}: {ingest[-1]['images_per_s']:7.1f} images/s", flush=True)
            searchable = ack_to_searchable(client, crops, 10 if args.quick else 50, names)
            print(f"acknowledged -> searchable: p50 {searchable['p50_ms']:.1f} ms, found at the first query "
                  f"{searchable['found_at_first_query']:.0%}", flush=True)
            queries = queries_while_ingesting(server.grpc_url, crops, seconds, names)
            for r in queries["rows"]:
                print(f"queries {r['setup']:9s}: p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  "
                      f"{r['qps']:6.1f} q/s  failures {r['failures']}", flush=True)
            live = client.live_items()[0]
    result = {"benchmark": "ingest_cpu", "machine": machine_record("cpu", "cores", "torch"), "gallery_size": size,
              "image_size": [64, 32], "seconds_per_measurement": seconds, "ingest": ingest,
              "ack_to_searchable": searchable, "queries": queries, "live_items_at_end": live,
              "rows": ingest + queries["rows"]}
    stem = result_stem("ingest_cpu", args.quick, args.results)
    write_result(stem, result)
    plot(result, stem)
    print(f"wrote {stem}.json and .png")


if __name__ == "__main__":
    main()
