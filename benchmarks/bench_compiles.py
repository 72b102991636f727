"""Kernel compiles of one gallery_search GPU instance, at start (before READY) and after it, at 8b2c390
(autotuned: every config the prune keeps, per autotune key) and now (one config per variant from
kernels/search_configs.json, kernels.prepare at start), and the time to READY they imply.

    .venv/bin/python benchmarks/bench_compiles.py [--max-batch 64] [--aot benchmarks/results/kernels_sm90.json]

No GPU needed: launches are recorded, not run, and each is keyed the way Triton's JIT keys its cache
on sm_90 (the argument binder's specialisation and the options); the old code is read from git.
Start: the instance's warm-up on a gallery of 4,096 items (ESA: K = 5, D = 512, fp16; a million
items would compile the same: N is specialised only on divisibility by 16 and N == 1).
After READY: every query kind (text with a margin; image and LIKE without), every batch size up to
--max-batch, k in {1, 2, 10, 16, 17, 64, 65, 100}, filtered or not, then the same after ingests make
the gallery 4,097 and 4,113 items. Time to READY = compiles x the median compile time of one
config for sm_90 measured here by kernels_aot.py (--aot; 2 CPU cores, ptxas included); the old
autotuner's benchmarking of each config on the GPU comes on top and is not counted.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD = "8b2c390"
KSET, D, N0 = 5, 512, 4096  # what a variant specialises on is N % 16 (and N == 1), not its size
AFTER_K = (1, 2, 10, 16, 17, 64, 65, 100)


def sm90_binder(fn, do_not_specialize=()):
    """Triton's sm_90 argument binder of a kernel: (bound, specialisation, options) of a launch."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature
    jit = JITFunction(fn, do_not_specialize=list(do_not_specialize))
    return create_function_from_signature(jit.signature, jit.params, make_backend(GPUTarget("cuda", 90, 32)))


class JitCounter:
    """Stands in for a module's search kernels: records the JIT cache key of every launch (runs
    nothing). `autotuned`: the module's kernels are triton.autotune objects (8b2c390): a new autotune
    key compiles every config its prune keeps, a launch of a known key compiles its chosen one."""

    def __init__(self, module, autotuned: bool = False, smem_limit: int = 227 * 1024, patch=setattr):
        """patch(module, name, value) puts the stand-ins in place (a test passes monkeypatch.setattr)."""
        self.keys, self.module, self.smem_limit = set(), module, smem_limit
        self.tuned: dict[tuple, object] = {}
        for name in ("_topk_kernel", "_dense_kernel"):
            kernel = fn = getattr(module, name)
            while hasattr(fn, "fn"):  # autotuner -> JIT (or interpreted) function -> the Python function
                fn = fn.fn
            binder = sm90_binder(fn, () if autotuned else module.RUNTIME_ARGS)
            patch(module, name, self._stand_in(name, binder, kernel if autotuned else None))

    def _stand_in(self, name, binder, autotuner):
        counter = self

        class Launch:
            def __getitem__(self, grid):
                return lambda **kwargs: counter._launch(name, binder, autotuner, kwargs)
        return Launch()

    def _launch(self, name, binder, autotuner, kwargs):
        if autotuner is None:
            self._add(name, binder, kwargs)
            return
        tensors = [str(v.dtype) for v in kwargs.values() if hasattr(v, "dtype")]
        key = (name, *(kwargs.get(k) for k in autotuner.keys), *tensors)
        if key not in self.tuned:
            meta = {k: v for k, v in kwargs.items() if k.isupper()}
            kept = self.module.prune(autotuner.configs, {"smem_limit": self.smem_limit}, **meta)
            self.tuned[key] = kept[0]  # which one the timing picks is unknowable here; each is one compile
            configs = kept
        else:
            configs = [self.tuned[key]]
        for c in configs:
            self._add(name, binder, dict(kwargs, **c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages))

    def _add(self, name, binder, kwargs):
        _, specialization, options = binder(**kwargs)
        self.keys.add((name, str(specialization), str(options)))


def old_module():
    """kernels/search_triton.py as of 8b2c390, loaded beside the current one."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD}:kernels/search_triton.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "search_triton_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("search_triton_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def count(module, autotuned: bool, max_batch: int) -> dict:
    import torch
    counter = JitCounter(module, autotuned)
    gen = torch.Generator().manual_seed(0)

    def queries(nq):
        return torch.nn.functional.normalize(torch.randn(nq, KSET, D, generator=gen), dim=-1).half()

    def gallery(n):  # never read: the launches are only recorded
        return torch.empty(n, KSET, D, dtype=torch.float16), torch.zeros(n), torch.ones(n, dtype=torch.bool)

    g, margin, allowed = gallery(N0)
    if autotuned:  # 8b2c390's gallery_search warm-up: powers of two, margin on, filtered or not
        powers = lambda m: sorted({1 << i for i in range(m.bit_length()) if 1 << i <= m} | {m})  # noqa: E731
        for b in powers(max_batch):
            for k in powers(128):
                for a in (None, allowed):
                    module.search(queries(b), g, k, 16.0, 1.0, margin, "chamfer", a)
    else:
        module.prepare(KSET, KSET, D, torch.float16, torch.device("cpu"), max_batch, 2**31 - 1, 16.0, 1.0, "chamfer")
    at_start = len(counter.keys)
    after = []
    for n in (N0, N0 + 1, N0 + 17):
        if n != N0:
            g, margin, allowed = gallery(n)
        for nq in range(1, max_batch + 1):
            q = queries(nq)
            for k in AFTER_K:
                for m in (margin, None):
                    for a in (None, allowed):
                        module.search(q, g, k, 16.0, 1.0, m, "chamfer", a)
        after.append(dict(N=n, compiled_after_ready=len(counter.keys) - at_start))
    return dict(at_start=at_start, after_ready=len(counter.keys) - at_start, by_gallery_size=after)


def compile_seconds(aot: Path) -> float | None:
    import json
    if not aot.exists():
        return None
    rows = [r["compile_s"] for r in json.loads(aot.read_text())["results"]
            if r["arch"] == 90 and r["status"] == "ok" and r["job"]["kernel"] in ("topk", "dense")]
    return statistics.median(rows) if rows else None


def main(argv=None) -> int:
    from common import RESULTS, machine_record, pyplot, save_plot, write_json
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-batch", type=int, default=64, help="gallery_search's max_batch_size (repo's default: 64)")
    ap.add_argument("--aot", type=Path, default=RESULTS / "kernels_sm90.json", help="kernels_aot.py's results")
    ap.add_argument("--out", type=Path, default=RESULTS / "compiles.json")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from kernels import search_triton
    rows = {f"{OLD} (autotuned)": count(old_module(), True, a.max_batch), "now": count(search_triton, False, a.max_batch)}
    each = compile_seconds(a.aot)
    for r in rows.values():
        r["ready_s_estimate"] = None if each is None else round(r["at_start"] * each, 1)
    report = dict(benchmark="compiles", machine=machine_record("torch", "python"), max_batch=a.max_batch,
                  gallery=dict(N=N0, K=KSET, D=D, dtype="fp16"), after_ready_k=AFTER_K,
                  compile_s_each=each, rows=rows)
    write_json(a.out, report, indent=1)
    for name, r in rows.items():
        print(f"{name:>20}: {r['at_start']:4d} compiles at start (~{r['ready_s_estimate']} s to READY at {each} s each), "
              f"{r['after_ready']:4d} after READY {[x['compiled_after_ready'] for x in r['by_gallery_size']]}")
    fig, ax = pyplot().subplots(figsize=(7, 4))
    names = list(rows)
    for i, (label, field) in enumerate((("at start (before READY)", "at_start"), ("after READY", "after_ready"))):
        values = [rows[n][field] for n in names]
        bars = ax.bar([x + 0.38 * i for x in range(len(names))], values, width=0.38, label=label)
        ax.bar_label(bars)
    ax.set_xticks([x + 0.19 for x in range(len(names))], names)
    ax.set_ylabel("kernel compiles (sm_90 JIT cache keys)")
    ax.set_title(f"one gallery_search GPU instance, max_batch {a.max_batch}; READY ~"
                 + ", ".join(f"{rows[n]['ready_s_estimate']} s" for n in names), fontsize=9)
    ax.legend()
    save_plot(fig, a.out.with_suffix(""))
    print(f"-> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
