"""Top-k set-similarity search: kernels.search against its baselines, measured in the same run.

    .venv/bin/python benchmarks/bench_search.py [--quick] [--results benchmarks/results]

CPU (always): the blocked CPU path against the naive torch reference (the [Q, N, Kq, Kg]
einsum + reductions + topk) for N in {10k, 100k}, Q in {1, 32}, K = 5 rows a set, D = 512,
and for K = 1 against faiss-cpu IndexFlatIP. GPU (when CUDA is present): the Triton kernel
for N in {100k, 1M}, Kq = Kg = 5, D = 512, fp16, Q in {1, 64}, against torch eager and
torch.compile of the reference, with achieved bytes/s and FLOP/s next to the device's copy
bandwidth and fp16 matmul rate measured in the same run. Writes
benchmarks/results/search_cpu.json/.png and search_gpu_<device>.json/.png (--quick: *_quick.*;
--results: another folder).
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import kernels
from common import RESULTS, grouped_bars, machine_record, median_seconds, pyplot, result_stem, save_plot, write_result
from kernels.set_similarity import set_similarity_reference

K_TOP, D, ALPHA = 10, 512, 16.0


def unit_sets(n: int, k: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    return F.normalize(torch.randn(n, k, D, device=device), dim=-1).to(dtype)


def naive(q, g, k):
    return set_similarity_reference(q, g, alpha=ALPHA).topk(min(k, g.shape[0]), dim=1)


def bench_cpu(quick: bool) -> list[dict]:
    import faiss  # a peer for flat inner-product top-k
    faiss.omp_set_num_threads(torch.get_num_threads())
    rows = []
    for n in (10_000,) if quick else (10_000, 100_000):
        for kset in (5, 1):
            g = unit_sets(n, kset)
            index = None
            if kset == 1:
                index = faiss.IndexFlatIP(D)
                index.add(g[:, 0].numpy())
            for nq in (1, 32):
                q = unit_sets(nq, kset)
                repeats = 3 if n * nq > 1e6 else 10
                row = {"N": n, "Q": nq, "K": kset, "D": D,
                       "ours_s": median_seconds(lambda: kernels.search(q, g, K_TOP), repeats),
                       "naive_s": median_seconds(lambda: naive(q, g, K_TOP), repeats)}
                if index is not None:
                    qn = np.ascontiguousarray(q[:, 0].numpy())
                    row["faiss_s"] = median_seconds(lambda: index.search(qn, K_TOP), repeats)
                    row["same_indices_as_faiss"] = float(np.mean(
                        index.search(qn, K_TOP)[1] == kernels.search(q, g, K_TOP)[1].numpy()))
                row["speedup_vs_naive"] = row["naive_s"] / row["ours_s"]
                if "faiss_s" in row:
                    row["ours_over_faiss"] = row["ours_s"] / row["faiss_s"]
                rows.append(row)
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                      flush=True)
    return rows


def cuda_time(fn, repeats: int) -> float:
    """Median seconds between CUDA events around each call, after one untimed call."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def device_peaks() -> dict:
    """Copy bandwidth (bytes read + written per second by a 4 GiB device-to-device copy) and
    the fp16 matmul rate (8192^3)."""
    buffers = [torch.empty(1 << 31, dtype=torch.float16, device="cuda") for _ in range(2)]
    copy_s = cuda_time(lambda: buffers[1].copy_(buffers[0]), 10)
    buffers.clear()
    a = torch.randn(8192, 8192, dtype=torch.float16, device="cuda")
    mm_s = cuda_time(lambda: a @ a, 10)
    return {"copy_bytes_per_s": 2 * (1 << 32) / copy_s, "fp16_matmul_flops": 2 * 8192 ** 3 / mm_s}


def bench_gpu(quick: bool) -> dict:
    peaks = device_peaks()
    compiled = torch.compile(naive)
    rows = []
    for n in (100_000,) if quick else (100_000, 1_000_000):
        g = unit_sets(n, 5, torch.float16, "cuda")
        for nq in (1, 64):
            q = unit_sets(nq, 5, torch.float16, "cuda")
            ours = cuda_time(lambda: kernels.search(q, g, K_TOP), 20)
            row = {"N": n, "Q": nq, "K": 5, "D": D, "dtype": "float16", "ours_s": ours}
            try:
                row["eager_s"] = cuda_time(lambda: naive(q, g, K_TOP), 5)
                row["compile_s"] = cuda_time(lambda: compiled(q, g, K_TOP), 5)
            except torch.OutOfMemoryError:  # the reference's [Q, N, 5, 5] fp32 cosines
                torch.cuda.empty_cache()
            bytes_read = g.numel() * g.element_size() + q.numel() * q.element_size()
            flops = 2 * nq * n * 25 * D
            floor = bytes_read / peaks["copy_bytes_per_s"]  # reading the gallery once at copy speed
            row.update(bytes_per_s=bytes_read / ours, flops=flops / ours, bandwidth_floor_s=floor,
                       over_bandwidth_floor=ours / floor, share_of_matmul_rate=flops / ours / peaks["fp16_matmul_flops"])
            for base in ("eager_s", "compile_s"):
                if base in row:
                    row[f"speedup_vs_{base[:-2]}"] = row[base] / ours
            rows.append(row)
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)
    return {"peaks": peaks, "rows": rows}


def plot(rows: list[dict], baselines: list[str], stem: Path, title: str) -> None:
    series = ["ours_s"] + baselines
    fig, ax = pyplot().subplots(figsize=(max(6, 1.3 * len(rows)), 3.8))
    grouped_bars(ax, [f"N={r['N']:,}\nQ={r['Q']} K={r['K']}" for r in rows],
                 {{"ours_s": "kernels.search"}.get(name, name[:-2]): [r.get(name, np.nan) for r in rows]
                  for name in series}, tick_fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("seconds per search (median)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    save_plot(fig, stem)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the smaller sizes only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON / PNG go")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    machine = machine_record("machine", "processor", "threads", "torch")  # threads: as set above
    rows = bench_cpu(args.quick)
    stem = result_stem("search_cpu", args.quick, args.results)
    write_result(stem, {"benchmark": "search_cpu", **machine, "k": K_TOP, "alpha": ALPHA, "rows": rows})
    plot(rows, ["naive_s", "faiss_s"], stem,
         f"top-{K_TOP} search on CPU ({args.threads} threads): kernels.search vs naive torch vs faiss")
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        gpu = bench_gpu(args.quick)
        stem = result_stem(f"search_gpu_{name.replace(' ', '_').replace('/', '_')}", args.quick, args.results)
        write_result(stem, {"benchmark": "search_gpu", "device": name, **machine, "k": K_TOP, **gpu})
        plot(gpu["rows"], ["eager_s", "compile_s"], stem,
             f"top-{K_TOP} search on {name}, fp16: Triton kernel vs torch eager / compile")


if __name__ == "__main__":
    main()
