"""Run every latency benchmark, one after the other (they must not share the cores).

    .venv/bin/python benchmarks/run_all.py [--quick] [--results benchmarks/results]

(a) encoders: torch eager vs ONNX Runtime (and the GPU variants where CUDA is present),
(b) search: kernels.search vs naive torch vs faiss (and the Triton kernel on a GPU),
(c) serving: gRPC load on the local Triton server, batching on / off, shards.
Each writes JSON and a PNG under --results (default benchmarks/results/; run_all passes it on as
each script's --results). --quick passes --quick to each (smaller sizes, shorter runs: a few
minutes on 2 CPU cores; the files are named *_quick.*).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS

HERE = Path(__file__).resolve().parent
SCRIPTS = ("bench_encoders.py", "bench_search.py", "bench_serving.py")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where every script's JSON / PNG go")
    args = parser.parse_args()
    options = ["--results", str(args.results)] + (["--quick"] if args.quick else [])
    failed = []
    for script in SCRIPTS:
        print(f"\n== {script} ==", flush=True)
        t0 = time.time()
        done = subprocess.run([sys.executable, str(HERE / script), *options])
        print(f"== {script}: {'ok' if done.returncode == 0 else f'failed ({done.returncode})'}, "
              f"{time.time() - t0:.0f} s", flush=True)
        if done.returncode:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
