"""Memory and time of the blocked evaluation on a CUHK-scale-and-beyond problem.

    .venv/bin/python benchmarks/bench_eval_memory.py [--queries 20000] [--gallery 20000]

Random unit embeddings (D=512) stand in for a model's; metrics are computed by
trainer.evaluate.blocked_metrics, one block of queries at a time. Reports the process's peak
resident memory next to what the full similarity matrix alone would take.
Writes benchmarks/results/eval_memory.json.
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

from common import machine_record, result_stem, write_result
from trainer.evaluate import BLOCK, blocked_metrics


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=20000)
    parser.add_argument("--gallery", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--people", type=int, default=2000)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(args.queries, 1, args.dim, generator=g), dim=-1)
    gallery = torch.nn.functional.normalize(torch.randn(args.gallery, 1, args.dim, generator=g), dim=-1)
    query_pids = torch.randint(0, args.people, (args.queries,), generator=g).numpy()
    gallery_pids = torch.randint(0, args.people, (args.gallery,), generator=g).numpy()
    before = peak_rss_mib()
    t0 = time.time()
    metrics = blocked_metrics(query, query_pids, gallery, gallery_pids)
    seconds = time.time() - t0
    result = {
        "benchmark": "eval_memory", **machine_record("machine", "threads"),
        "queries": args.queries, "gallery": args.gallery, "dim": args.dim, "block": BLOCK,
        "seconds": round(seconds, 1), "peak_rss_mib_before": round(before), "peak_rss_mib": round(peak_rss_mib()),
        "full_matrix_fp32_mib": round(args.queries * args.gallery * 4 / 2**20),
        "full_argsort_int64_mib": round(args.queries * args.gallery * 8 / 2**20),
        "metrics": metrics,
    }
    write_result(result_stem("eval_memory"), result)
    print(f"{args.queries} x {args.gallery}: {seconds:.1f} s, peak RSS {result['peak_rss_mib']} MiB "
          f"(inputs and interpreter: {result['peak_rss_mib_before']} MiB); the full similarity "
          f"matrix alone would be {result['full_matrix_fp32_mib']} MiB and its argsort "
          f"{result['full_argsort_int64_mib']} MiB")


if __name__ == "__main__":
    main()
