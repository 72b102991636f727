"""What gpu_check's sections share: the device (CUDA, or the CPU under --smoke), the sizes, the log's
clock, the timers and a section's record. A library module of benchmarks/ (never run): gpu_check.py
calls configure() first, before any section runs.
"""
from __future__ import annotations

import datetime
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import median_seconds, write_json

ALPHA, KSET, TOPK = 16.0, 5, 10


class _Run:
    """How this process runs: set once by configure(), read by every section."""
    smoke = False
    t0 = time.time()

    @property
    def device(self) -> str:
        return "cpu" if self.smoke else "cuda"


RUN = _Run()


def configure(smoke: bool, t0: float) -> None:
    RUN.smoke, RUN.t0 = smoke, t0


def log(msg: str) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S")
    print(f"[{now} +{time.time() - RUN.t0:6.1f}s] {msg}", flush=True)


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:2000]


def size(full, smoke):
    return smoke if RUN.smoke else full


class Budget:
    def __init__(self, end: float):
        self.end = end  # a time.time(): the child's start-up (imports, CUDA) counts against its budget

    def left(self) -> float:
        return self.end - time.time()


class Record(dict):
    """A section's results, rewritten (atomically) to its file at every save: a killed child leaves them."""

    def __init__(self, path: Path):
        super().__init__(status="running", ok=False, error=None)
        self.path = path
        self.save()

    def save(self) -> None:
        write_json(self.path, self, indent=1)


def sync() -> None:
    if RUN.device == "cuda":
        torch.cuda.synchronize()


def bench(fn, warmup: int = 25, rep: int = 100) -> float:
    """Median ms: triton.testing.do_bench on the GPU (L2 flushed between runs); under --smoke a CPU timer."""
    if RUN.device == "cuda":
        import triton.testing
        return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
    return median_seconds(fn, 3) * 1e3


def call_seconds(fn) -> float:
    """Seconds of one synchronised call (a first call: Triton's compile and autotune, or torch.compile's)."""
    t = time.time()
    fn()
    sync()
    return round(time.time() - t, 2)


def unit_sets(n, k, d, dtype, device, gen, chunk=1 << 16):
    """Unit rows, drawn in chunks on `device` (a 1.1M x 5 x 512 float32 temporary would be 11 GB)."""
    out = torch.empty(n, k, d, dtype=dtype, device=device)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        out[i:i + m] = F.normalize(torch.randn(m, k, d, device=device, generator=gen), dim=-1).to(dtype)
    return out


def exact_sets(n, k, d, gen):
    """Rows of four entries +-0.5 (as tests/kernels/test_search.py): every cosine is a multiple of 1/4, exact
    in any summation order, so duplicated items score bit-identically on every backend, the interpreter too."""
    rows = torch.zeros(n * k, d)
    cols = torch.stack([torch.randperm(d, generator=gen)[:4] for _ in range(n * k)])
    signs = torch.randint(0, 2, (n * k, 4), generator=gen) * 2 - 1
    return rows.scatter_(1, cols, 0.5 * signs.float()).view(n, k, d)


def torch_dtype(name: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "int8": torch.int8}[name]
