"""Two-stage search (a FAISS index per segment, candidates scored exactly) against the exact scan:
recall@10 of the exact top-10 as a function of the proxy, the IVF lists visited and the candidates;
latency; index build time and size.

    .venv/bin/python benchmarks/bench_two_stage.py [--sizes 100000 1000000] [--queries 32] [--quick]
    .venv/bin/python benchmarks/bench_two_stage.py --sizes 10000000 --dim 16 --kinds trained --proxies set \
        --results benchmarks/results/two_stage_cpu_10m    # 10M items in this machine's memory

Galleries: `trained` (the sets of a one-epoch tiny ESA model, 128-d, of synthetic people's images,
multiplied to N items by adding noise to a random base item and renormalising: many near-duplicate
views of each person, as a camera archive has; `--dim d`: the model's sets and captions through one
random projection to d values a row, renormalised, where N x 5 x 128 would not fit) and `random`
(unit random sets). Queries: the model's text sets of captions of the same people. Both searched as
the CPU server searches them (serving.live_gallery.LiveGallery: the exact scan over the sets in
fp32 in memory, two-stage over the segments' fp16 memory maps; one batch of --queries texts);
latency is per query, from the batch. Indexes: IVF with sqrt(N) lists over each proxy of
export/ann_index.py, vectors in 8 bits (FAISS's scalar quantizer; `--encoding Flat`: fp32).
Writes benchmarks/results/two_stage_cpu[_quick].json and .png (or --results).
"""
from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import kernels
from common import machine_record, pyplot, result_stem, save_plot, write_result
from tiny_runs import tiny_model

CANDIDATES = (30, 100, 300, 1000, 3000)
PROBED = (1 / 8, 1 / 4, 1 / 2)  # shares of the IVF lists a query visits (1/2: ann_index's default)


def base_sets(work: Path, ids: int):
    """(image sets [n, K+1, D], caption sets [m, K+1, D], the checkpoint) of the tiny model."""
    from trainer.data.formats import load_dataset
    from trainer.data.synthetic import write_synthetic
    from trainer.evaluate import encode_split
    _, ckpt, _ = tiny_model(work / "model")
    data = load_dataset(write_synthetic(work / "people", ids=ids, seed=1, image_size=(64, 32), progress=False))
    entries = data.train + data.val + data.test
    texts, _, images, _ = encode_split(ckpt.model.eval(), ckpt.tokenizer, entries)
    return images, texts, ckpt


def multiplied(images: torch.Tensor, n: int, noise: float, seed: int = 0) -> torch.Tensor:
    """n sets, each a random base image's plus noise, renormalised (in chunks: bounded memory)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, *images.shape[1:], dtype=torch.float16)
    for a in range(0, n, 1 << 17):
        b = min(a + (1 << 17), n)
        pick = images[torch.randint(len(images), (b - a,), generator=g)]
        out[a:b] = F.normalize(pick + noise * torch.randn(pick.shape, generator=g) / math.sqrt(pick.shape[-1]),
                               dim=-1).half()
    return out


def projected(sets: torch.Tensor, dim: int | None) -> torch.Tensor:
    """Sets through one fixed random projection to `dim` values a row, renormalised (None: as they are)."""
    if dim is None:
        return sets
    basis = torch.linalg.qr(torch.randn(sets.shape[-1], dim, generator=torch.Generator().manual_seed(7)))[0]
    return F.normalize(sets.float() @ basis, dim=-1)


def recall_at_10(exact: torch.Tensor, got: torch.Tensor) -> float:
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(exact, got)]))


def certified_share(sets: torch.Tensor, queries: torch.Tensor, score: dict, rows: int) -> float:
    """The share of queries whose exact top-10 a proof could certify from an exact search of each
    query row's `rows` nearest gallery rows: an item none of whose rows was found has every
    cosine with query row x at most r_x (the rows-th best), so with unit rows its score is at most
    r_0 + weight ((mean_x r_x + ln Kg / alpha) + (max_x r_x + ln Kq / alpha)) / 2 (each smooth
    maximum exceeds the max by at most ln(count) / alpha); proven when the 10th exact score
    reaches that."""
    import faiss
    alpha, weight = score["alpha"], score["weight"]
    tenth = kernels.search(queries, sets.float(), 10, alpha=alpha, weight=weight)[0][:, 9].numpy()
    flat = faiss.IndexFlatIP(sets.shape[-1])
    flat.add(np.ascontiguousarray(sets.reshape(-1, sets.shape[-1]), dtype=np.float32))
    found, _ = flat.search(np.ascontiguousarray(queries.reshape(-1, queries.shape[-1]), dtype=np.float32), rows)
    r = found[:, -1].reshape(len(queries), -1)
    bound = r[:, 0] + weight * (r.mean(1) + r.max(1) + math.log(sets.shape[1] * queries.shape[1]) / alpha) / 2
    return float(np.mean(tenth >= bound))


def run(kind: str, sets: torch.Tensor, queries: torch.Tensor, score: dict, proxies: list[str], encoding: str,
        work: Path) -> dict:
    from export.ann_index import build_gallery_indexes, index_path
    from export.gallery import load_gallery, save_gallery
    from serving.live_gallery import LiveGallery
    n = len(sets)
    folder = work / f"{kind}-{n}"
    gallery = save_gallery(folder / "gallery", sets, torch.zeros(n, dtype=torch.long),
                           [f"cam{i % 16:02d}/{i:09d}.jpg" for i in range(n)], "bench", **score)
    del sets
    full = LiveGallery(folder / "live-exact", gallery, dtype=torch.float32)  # the CPU server's exact scan
    full.search(queries[:1], 10)  # warm
    start = time.perf_counter()
    exact = full.search(queries, 10)[1]
    exact_ms = (time.perf_counter() - start) * 1e3 / len(queries)
    full.close()
    nlist, out = int(math.sqrt(n)), {}
    for proxy in proxies:
        start = time.perf_counter()
        build_gallery_indexes(gallery, proxy, f"IVF{nlist},{encoding}", progress=lambda _: None)
        build_s = time.perf_counter() - start
        index_bytes = sum(index_path(s.file, proxy).stat().st_size
                          for s in load_gallery(gallery, with_sets=False).segments)
        live = LiveGallery(folder / f"live-{proxy}", gallery, dtype=torch.float32, ann=proxy)  # sets: memory maps
        rows = []
        for share in PROBED:
            live.nprobe = max(1, round(share * nlist))
            for c in (c for c in CANDIDATES if c < n):
                start = time.perf_counter()
                got = live.search(queries, 10, candidates=c)[1]
                ms = (time.perf_counter() - start) * 1e3 / len(queries)
                rows.append({"candidates": c, "nprobe": live.nprobe, "recall_at_10": recall_at_10(exact, got),
                             "ms_per_query": ms, "speedup": exact_ms / ms})
                print(f"{kind:8s} N={n:>10,}  {proxy:6s}  nprobe {live.nprobe:>4}/{nlist}  candidates {c:5d}  "
                      f"recall@10 {rows[-1]['recall_at_10']:.3f}  {ms:8.2f} ms/query ({exact_ms / ms:5.1f}x the "
                      f"exact scan's {exact_ms:.1f})", flush=True)
        live.close()
        out[proxy] = {"index_build_s": build_s, "index_bytes_per_item": index_bytes / n, "rows": rows}
    shutil.rmtree(folder)
    return {"gallery": kind, "items": n, "nlist": nlist,
            "exact_ms_per_query": exact_ms, "proxies": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--noise", type=float, default=0.5, help="per-row noise of a multiplied view (its norm)")
    parser.add_argument("--dim", type=int, default=None, help="project the model's sets to this many values a row")
    parser.add_argument("--kinds", nargs="+", choices=["trained", "random"], default=["trained", "random"])
    parser.add_argument("--proxies", nargs="+", choices=["set", "global", "rows"], default=["set", "global"])
    parser.add_argument("--encoding", default="SQ8",
                        help="the IVF lists' vectors: SQ8 (8 bits a value, tbps ann's default), Flat (fp32), SQfp16, PQ<m>")
    parser.add_argument("--certify", type=int, nargs="*", default=[],
                        help="rows a query row: the share of queries a proof from an exact row search certifies")
    parser.add_argument("--quick", action="store_true", help="10k items, 8 queries")
    parser.add_argument("--results", type=Path, default=None,
                        help="the results' stem (default benchmarks/results/two_stage_cpu)")
    a = parser.parse_args()
    sizes, count = ([10_000], 8) if a.quick else (a.sizes, a.queries)
    runs = []
    with tempfile.TemporaryDirectory(prefix="tbps-two-stage-") as tmp:
        work = Path(tmp)
        images, texts, ckpt = base_sets(work, ids=200)
        images, texts = projected(images, a.dim), projected(texts, a.dim)
        queries = texts[torch.randperm(len(texts), generator=torch.Generator().manual_seed(0))[:count]].float()
        score = ckpt.model.score_params
        for n in sizes:
            for kind in a.kinds:
                sets = (multiplied(images, n, a.noise) if kind == "trained" else
                        F.normalize(torch.randn(n, *images.shape[1:], generator=torch.Generator().manual_seed(1)),
                                    dim=-1).half())
                certified = {rows: certified_share(sets, queries, score, rows) for rows in a.certify}
                for rows, share in certified.items():
                    print(f"{kind:8s} N={n:>10,}  certified from {rows} rows a query row: {share:.3f}", flush=True)
                runs.append(dict(run(kind, sets, queries, score, a.proxies, a.encoding, work), certified=certified))
                del sets
    stem = a.results or result_stem("two_stage_cpu", a.quick)
    write_result(stem, {"benchmark": "two_stage_cpu", **machine_record("machine", "processor", "cores", "date"),
                        "model": "tiny esa, one epoch", "set_shape": list(images.shape[1:]),
                        "projected": a.dim is not None, "queries": count, "noise": a.noise,
                        "factory": f"IVF<sqrt N>,{a.encoding}", "runs": runs})
    plot(runs, stem)


def plot(runs: list[dict], stem: Path) -> None:
    fig, (rec, lat) = pyplot().subplots(1, 2, figsize=(11, 4))
    for r in runs:
        for proxy, p in r["proxies"].items():
            widest = max(row["nprobe"] for row in p["rows"])  # the default share of the lists
            mine = [row for row in p["rows"] if row["nprobe"] == widest]
            label = f"{r['gallery']} N={r['items']:,} {proxy} nprobe {widest}/{r['nlist']}"
            c = [row["candidates"] for row in mine]
            rec.plot(c, [row["recall_at_10"] for row in mine], marker="o", label=label)
            lat.plot(c, [row["ms_per_query"] for row in mine], marker="o", label=label)
        lat.axhline(r["exact_ms_per_query"], ls="--", color="grey")
    rec.axhline(0.99, ls=":", color="grey")
    for ax, ylabel in ((rec, "recall@10 of the exact top-10"), (lat, "ms per query (batch); dashed: exact")):
        ax.set_xscale("log")
        ax.set_xlabel("candidates per query")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=5)
    lat.set_yscale("log")
    fig.suptitle("two-stage search on CPU: FAISS IVF over each proxy, candidates scored by kernels.search", fontsize=9)
    save_plot(fig, stem)


if __name__ == "__main__":
    main()
