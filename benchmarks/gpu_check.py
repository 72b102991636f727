"""One command on a GPU: the compiled search kernels checked and timed, the encoders and a training step timed.

    make gpu-check                                      # H100/H200: at most 5 minutes
    .venv/bin/python benchmarks/gpu_check.py --smoke --out /tmp/gpu_check.json   # the same logic on CPU (CI)
    python3 benchmarks/gpu_check.py --only correctness,scale                   # a subset

Sections (each a child process of its own, so that a device fault or a hang in one cannot take the
others down, and each with a time budget; the JSON is rewritten after every section, and a child
saves its own partial results as it goes, so a run cut short keeps what it measured):
  correctness  kernels.search / set_scores against set_similarity_reference in float64 at awkward sizes
               (Q, N off every block, Kq != Kg, D = 40), fp16/bf16/fp32, chamfer/maxsim, margin, alpha
               16/64, k in {1, 10, 64, 100}, empty gallery, k > N, tied duplicates, non-unit rows; and
               the gradient of set_scores_with_grad against autograd of the reference
  scale        N = 1.1M x 5 x 512 fp16: a planted neighbour per query either side of the 2^31-element
               edge (item 838,860) and past the old dense-grid limit (1,048,560 items), found at rank 1
               by search (k = 10, and k = 100: the dense path); set_scores on every item against the reference
  timings      do_bench of kernels.search, the torch eager reference in blocks (dense scores + topk), that
               block function under torch.compile, and the floor: a device-to-device copy of the same
               gallery; N in {100k, 1M}, Q in {1, 64}, K = 5, D = 512 fp16, k = 10
  encoders     image and text encoders of the vit-b16-384x128 ESA model in fp16, batch 1 and 32
  train_step   one AMP training step of that model (its real losses, backward, Adam): ms and peak memory
Writes benchmarks/results/gpu_<device>.json and .png (--out: elsewhere). --smoke: CPU, tiny sizes, the
Triton kernels through the interpreter (sections 1-2); its timings mean nothing, only the logic is checked.
Exit status 0 only when every section finished and every check passed.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import importlib
import importlib.metadata
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# kernels' public API is used everywhere else; these two module names are the ones to change if kernels/ renames them.
SCORES_AUTOGRAD_MODULE = "kernels.scores_autograd"  # set_scores_with_grad: the differentiable scores
TRITON_SEARCH_MODULE = "kernels.search_triton"  # search/scores(q, g, [k,] alpha, weight, margin, mode): --smoke only

SECTIONS = ("correctness", "scale", "timings", "encoders", "train_step")
# Soft budgets (s) on an H100/H200: a child stops starting work past its own; the parent kills it GRACE_S later.
# They include each child's start-up; their sum stays inside DEADLINE_S, and that inside the 5 minutes asked for.
BUDGET_S = {"correctness": 100, "scale": 55, "timings": 75, "encoders": 20, "train_step": 30}
SMOKE_BUDGET_S = 120  # per section on 2 CPU cores: never reached at the smoke sizes (CI asserts nothing is skipped)
GRACE_S, RESERVE_S, DEADLINE_S = 15, 15, 290  # RESERVE_S: kept back for each section still to run
# correctness runs as this many processes side by side: its time goes to Triton compiling many specialisations,
# one CPU core per process (the GPU machines have 16); 2 under --smoke, so that CI runs the merge too
CORRECTNESS_SHARDS = 4

ALPHA, KSET, TOPK = 16.0, 5, 10
NUM_CLASSES = 11003  # CUHK-PEDES' training identities: the ID classifier's real size
ATOL = {"fp16": 2e-4, "bf16": 2e-4, "fp32": 2e-5}  # scores, products of the same rounded inputs in float64
GRAD_RTOL = {"fp16": 1e-2, "bf16": 1e-2, "fp32": 1e-4}  # gradients relative to their largest entry
SCALE_ATOL = 1e-3  # N = 1.1M: the reference is blocked float32 there


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, Triton interpreter (needs --out)")
    ap.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/gpu_<device>.json); plot beside it")
    ap.add_argument("--only", help=f"comma-separated sections, of {','.join(SECTIONS)}")
    ap.add_argument("--deadline", type=float, default=DEADLINE_S, help="seconds for the whole run")
    ap.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)  # a child: run this section
    ap.add_argument("--section-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--shard", default="0/1", help=argparse.SUPPRESS)  # correctness: this child's i/n of the cases
    ap.add_argument("--stop-at", type=float, help=argparse.SUPPRESS)  # time.time() past which a child starts nothing
    ap.add_argument("--t0", type=float, help=argparse.SUPPRESS)  # the parent's start, for the log's clock
    args = ap.parse_args(argv)
    if args.smoke and args.out is None and args.section is None:
        ap.error("--smoke needs --out (it must not overwrite benchmarks/results/)")
    args.sections = SECTIONS if not args.only else tuple(s.strip() for s in args.only.split(","))
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) {sorted(unknown)}; available: {', '.join(SECTIONS)}")
    return args


ARGS = parse_args()
T0 = ARGS.t0 or time.time()
if ARGS.smoke:  # read by triton at its first import (the kernels import it lazily): set before anything imports it
    os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, str(ROOT))  # the GPU machine runs this with its own python3, the project not installed

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import kernels  # noqa: E402
from kernels.set_similarity import set_similarity_reference  # noqa: E402

DEVICE = "cpu" if ARGS.smoke else "cuda"


def log(msg: str) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S")
    print(f"[{now} +{time.time() - T0:6.1f}s] {msg}", flush=True)


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:2000]


def size(full, smoke):
    return smoke if ARGS.smoke else full


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
        write_json(self.path, self)


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def bench(fn, warmup: int = 25, rep: int = 100) -> float:
    """Median ms: triton.testing.do_bench on the GPU (L2 flushed between runs); under --smoke a CPU timer."""
    if DEVICE == "cuda":
        import triton.testing
        return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
    fn()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return sorted(times)[1]


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
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


# ------------------------------------------------------------------------------------------------ backends
def search_backend() -> tuple:
    """(search, set_scores, description). On the GPU the public kernels API (the compiled Triton kernels).
    Under --smoke the dispatcher would send CPU tensors to the blocked torch path, so the Triton module is
    called directly, through the interpreter; if kernels/ has renamed it, the CPU path stands in, said so."""
    if not ARGS.smoke:
        return kernels.search, kernels.set_scores, "kernels.search / set_scores (compiled Triton)"
    try:
        mod = importlib.import_module(TRITON_SEARCH_MODULE)
    except ImportError as e:
        return (kernels.search, kernels.set_scores,
                f"kernels' CPU path: {TRITON_SEARCH_MODULE} is not importable ({e}); update TRITON_SEARCH_MODULE")

    def search(q, g, k, alpha=ALPHA, weight=1.0, margin=None, mode="chamfer"):
        return mod.search(q.to(g.dtype), g, k, alpha, weight, margin, mode)

    def scores(q, g, alpha=ALPHA, weight=1.0, margin=None, mode="chamfer"):
        return mod.scores(q.to(g.dtype), g, alpha, weight, margin, mode)
    return search, scores, f"{TRITON_SEARCH_MODULE} through the Triton interpreter"


def topk_report(scores, indices, reference, k, atol) -> dict:
    """tests/kernels/test_search.py's check_topk as a report: sorted, unique, in range, equal to the
    reference's top-k up to near-ties (each returned index's reference score is the returned score,
    and the returned scores are the reference's k best)."""
    kk = min(k, reference.shape[1])
    s, i, ref = scores.detach().double().cpu(), indices.cpu(), reference.detach().double().cpu()
    checks = {"shape": tuple(s.shape) == tuple(i.shape) == (ref.shape[0], kk),
              "int64": i.dtype == torch.int64, "finite": bool(torch.isfinite(s).all())}
    out = {"checks": checks}
    if checks["shape"] and s.numel():
        checks["in_range"] = bool(((i >= 0) & (i < ref.shape[1])).all())
        if checks["in_range"]:
            expected = ref.sort(dim=1, descending=True, stable=True).values[:, :kk]
            out["max_err_vs_topk"] = float((s - expected).abs().max())
            out["max_err_vs_own_index"] = float((ref.gather(1, i) - s).abs().max())
            checks["scores_are_the_topk"] = out["max_err_vs_topk"] <= atol
            checks["indices_score_as_returned"] = out["max_err_vs_own_index"] <= atol
        checks["unique"] = all(len(set(row.tolist())) == row.numel() for row in i)
        checks["sorted"] = bool((s[:, 1:] <= s[:, :-1] + atol).all())
    out["ok"] = all(checks.values())
    return out


def dense_report(dense, reference, atol) -> dict:
    d, ref = dense.detach().double().cpu(), reference.detach().double().cpu()
    out = {"shape_ok": tuple(d.shape) == tuple(ref.shape), "float32": dense.dtype == torch.float32,
           "nonfinite": int((~torch.isfinite(d)).sum())}
    out["max_err"] = float((d - ref).abs().max()) if out["shape_ok"] and d.numel() else 0.0
    out["ok"] = bool(out["shape_ok"] and out["float32"] and out["nonfinite"] == 0 and out["max_err"] <= atol)
    return out


def tie_report(scores, indices, gallery) -> dict:
    """Ties go to the lower index: every returned item that duplicates an earlier gallery item comes
    after it in the list, with the same score bit for bit."""
    flat = gallery.reshape(gallery.shape[0], -1).cpu()
    first = {}
    earlier = [[] for _ in range(len(flat))]
    for j, row in enumerate(flat):
        key = row.numpy().tobytes()
        earlier[j] = list(first.get(key, []))
        first.setdefault(key, []).append(j)
    misordered = unequal = 0
    for srow, irow in zip(scores.cpu().tolist(), indices.cpu().tolist()):
        pos = {j: p for p, j in enumerate(irow)}
        for p, j in enumerate(irow):
            for e in earlier[j]:
                misordered += pos.get(e, len(irow)) > p
                unequal += e in pos and srow[pos[e]] != srow[p]
    return {"misordered": misordered, "unequal_scores": unequal, "ok": misordered == 0 and unequal == 0}


# ------------------------------------------------------------------------------------------------ 1. correctness
def correctness_cases() -> list[dict]:
    """Most important first (a budget cut drops the tail, recorded). Sizes: GPU / --smoke."""
    q64, q65, n_big, d512 = size(64, 4), size(65, 5), size(4099, 45), size(512, 32)
    base = dict(kind="random", Q=3, N=size(1000, 40), Kq=5, Kg=5, D=d512, dtype="fp16", mode="chamfer",
                alpha=ALPHA, weight=1.0, margin=False, ks=(TOPK,))
    variants = [
        dict(),
        dict(Q=1, N=n_big, ks=(1, 10)),
        dict(Q=q64, N=n_big),
        dict(Q=q65, N=n_big, margin=True),
        dict(N=1, ks=(1, 10)),                                   # k > N
        dict(N=17, ks=(10, 64)),
        dict(N=0),                                               # empty gallery
        dict(N=size(4099, 70), ks=(64, 100)),                    # k' = min(k, N) > 64: the dense path
        dict(kind="ties", D=size(64, 16), Kq=4, Kg=4, ks=(1, 9, 30)),
        dict(kind="nonunit", N=size(60, 20), ks=(10, size(60, 20))),  # k = N: the -inf rows are ranked too
        dict(kind="nonunit", N=size(60, 20), alpha=40.0, ks=(size(60, 20),)),
        dict(kind="nonunit", N=size(60, 20), alpha=64.0, ks=(size(60, 20),)),
        dict(Kq=1, Kg=1),
        dict(Kq=4, Kg=3, D=40, N=n_big),
        dict(D=size(64, 16)),
        dict(mode="maxsim"),
        dict(mode="maxsim", margin=True, Kq=4, Kg=3, D=40),
        dict(alpha=64.0),
        dict(alpha=64.0, margin=True, Q=q65, N=n_big, Kq=4, Kg=3),
        dict(dtype="bf16", margin=True),
        dict(dtype="bf16", mode="maxsim", alpha=64.0, Q=q64, N=n_big),
        dict(dtype="fp32"),
        dict(dtype="fp32", mode="maxsim", margin=True, Kq=4, Kg=3, D=40, N=n_big),
        dict(kind="nonunit", dtype="fp32", N=size(60, 20), ks=(size(60, 20),)),
        dict(weight=0.5, margin=True, ks=(1, 10)),
        dict(weight=0.0),                                        # global cosine alone
    ]
    return [dict(base, **v, seed=1000 + i) for i, v in enumerate(variants)]


def case_inputs(c: dict):
    gen = torch.Generator().manual_seed(c["seed"])
    dtype = torch_dtype(c["dtype"])
    if c["kind"] == "ties":  # every item of `base` appears two or three times
        base = exact_sets(24, c["Kg"], c["D"], gen)
        g, q = torch.cat([base, base, base[3:9]]), exact_sets(c["Q"], c["Kq"], c["D"], gen)
    else:
        q, g = unit_sets(c["Q"], c["Kq"], c["D"], torch.float32, "cpu", gen), \
            unit_sets(c["N"], c["Kg"], c["D"], torch.float32, "cpu", gen)
    if c["kind"] == "nonunit":  # rows of norm 3; item 0 aligned with query 0's global row (cosine +9: exp
        q, g = 3 * q, 3 * g     # overflows a shift that assumes cosines <= 1), item 1 opposed (-9: it underflows)
        g[0] = q[0, 0].expand_as(g[0])
        g[1] = -g[0]
    margin = 0.2 * torch.rand(g.shape[0], generator=gen) if c["margin"] else None
    return q.to(dtype), g.to(dtype), margin


def check_case(c: dict, backend) -> dict:
    search, scores, _ = backend
    q, g, margin = case_inputs(c)
    params = dict(alpha=c["alpha"], weight=c["weight"], mode=c["mode"])
    qd, gd, md = q.to(DEVICE), g.to(DEVICE), None if margin is None else margin.to(DEVICE)
    # queries are cast to the gallery's dtype by kernels.search: the reference sees the same rounded values
    ref = set_similarity_reference(qd.to(gd.dtype).double(), gd.double(),
                                   margin=None if md is None else md.double(), **params)
    atol = ATOL[c["dtype"]] * max(1.0, float(ref.abs().max()) if ref.numel() else 1.0)
    dense = scores(qd, gd, margin=md, **params)
    out = {"N": g.shape[0], "atol": atol, "dense": dense_report(dense, ref, atol), "search": {}}
    for k in c["ks"]:
        s, i = search(qd, gd, k, margin=md, **params)
        rep = topk_report(s, i, ref, k, atol)
        if c["kind"] == "ties":
            rep["ties"] = tie_report(s, i, g)
            rep["ok"] = rep["ok"] and rep["ties"]["ok"]
        if k == c["ks"][0]:
            s2, i2 = search(qd, gd, k, margin=md, **params)
            rep["deterministic"] = bool(torch.equal(s.cpu(), s2.cpu()) and torch.equal(i.cpu(), i2.cpu()))
            rep["ok"] = rep["ok"] and rep["deterministic"]
        out["search"][str(k)] = rep
    out["ok"] = out["dense"]["ok"] and all(r["ok"] for r in out["search"].values())
    return out


def grad_cases() -> list[dict]:
    # maxsim stays small: its gradient jumps where two cosines tie, and float32 vs float64 may pick either
    d512 = size(512, 32)
    cases = [dict(Q=5, N=23, Kq=5, Kg=3, D=40, dtype="fp32", mode="chamfer", alpha=16.0, weight=1.0, margin=True),
             dict(Q=size(64, 4), N=size(1000, 40), Kq=5, Kg=5, D=d512, dtype="fp16", mode="chamfer", alpha=16.0,
                  weight=1.0, margin=False),
             dict(Q=size(64, 4), N=size(1000, 40), Kq=5, Kg=5, D=d512, dtype="fp32", mode="chamfer", alpha=64.0,
                  weight=0.8, margin=True),
             dict(Q=size(8, 3), N=size(300, 30), Kq=5, Kg=5, D=d512, dtype="bf16", mode="chamfer", alpha=16.0,
                  weight=1.0, margin=False),
             dict(Q=3, N=17, Kq=4, Kg=4, D=16, dtype="fp32", mode="maxsim", alpha=16.0, weight=1.0, margin=False),
             dict(Q=2, N=9, Kq=1, Kg=1, D=8, dtype="fp32", mode="chamfer", alpha=16.0, weight=1.0, margin=False)]
    return [dict(c, seed=2000 + i) for i, c in enumerate(cases)]


def check_grad(c: dict, set_scores_with_grad) -> dict:
    gen = torch.Generator().manual_seed(c["seed"])
    dtype = torch_dtype(c["dtype"])
    q = unit_sets(c["Q"], c["Kq"], c["D"], dtype, "cpu", gen).to(DEVICE)
    g = unit_sets(c["N"], c["Kg"], c["D"], dtype, "cpu", gen).to(DEVICE)
    margin = (0.2 * torch.rand(c["N"], generator=gen)).to(DEVICE) if c["margin"] else None
    target = torch.randn(c["Q"], c["N"], generator=gen).to(DEVICE)
    params = dict(alpha=c["alpha"], weight=c["weight"], mode=c["mode"])
    results = []
    for fn, cast in ((set_scores_with_grad, lambda t: t), (set_similarity_reference, lambda t: t.double())):
        leaves = [cast(t).detach().requires_grad_() for t in (q, g) + ((margin,) if margin is not None else ())]
        s = fn(leaves[0], leaves[1], margin=leaves[2] if margin is not None else None, **params)
        (s * cast(target)).sum().backward()
        results.append((s.detach(), [t.grad for t in leaves]))
    (ours, our_grads), (ref, ref_grads) = results
    out = {"scores_max_err": float((ours.double() - ref).abs().max()), "grad_rel_err": {}}
    for name, a, b in zip(("query", "gallery", "margin"), our_grads, ref_grads):
        out["grad_rel_err"][name] = float((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-12))
    out["grad_dtypes_ok"] = our_grads[0].dtype == our_grads[1].dtype == dtype
    out["ok"] = bool(out["scores_max_err"] <= ATOL[c["dtype"]] and out["grad_dtypes_ok"]
                     and max(out["grad_rel_err"].values()) <= GRAD_RTOL[c["dtype"]])
    return out


def section_correctness(rec: Record, budget: Budget) -> None:
    backend = search_backend()
    rec.update(backend=backend[2], cases=[], grad=[], skipped=[])
    grad_fn, grad_error = None, None
    try:
        grad_fn = importlib.import_module(SCORES_AUTOGRAD_MODULE).set_scores_with_grad
    except (ImportError, AttributeError) as e:
        grad_error = (f"{SCORES_AUTOGRAD_MODULE}.set_scores_with_grad is not importable ({e}); "
                      "update SCORES_AUTOGRAD_MODULE")
    rec["grad_backend"] = grad_error or f"{SCORES_AUTOGRAD_MODULE}.set_scores_with_grad on {DEVICE}"
    interpreter = "interpreter" in backend[2]
    i, n = map(int, ARGS.shard.split("/"))
    rec["shard"] = ARGS.shard
    for kind, cases, run in (("cases", correctness_cases()[i::n], lambda c: check_case(c, backend)),
                             ("grad", grad_cases()[i::n], lambda c: check_grad(c, grad_fn))):
        for c in cases:
            label = " ".join(f"{k}={v}" for k, v in c.items() if k != "seed")
            if budget.left() < 3:
                rec["skipped"].append(f"{kind}: {label} (past the section's budget)")
                continue
            t = time.time()
            entry = dict(c)
            if kind == "grad" and grad_fn is None:
                entry.update(ok=False, error=grad_error)
            elif kind == "cases" and interpreter and c["dtype"] == "bf16":
                entry.update(ok=True, skipped="the Triton interpreter cannot run bf16 (numpy has no bfloat16)")
            else:
                try:
                    entry.update(run(c))
                except Exception as e:  # noqa: BLE001 - one failing case must not hide the others
                    entry.update(ok=False, error=error_text(e), trace=traceback.format_exc()[-1500:])
            entry["seconds"] = round(time.time() - t, 2)
            rec[kind].append(entry)
            rec.save()
            log(f"correctness[{ARGS.shard}]: {kind} {'ok' if entry['ok'] else 'FAILED'} ({entry['seconds']} s) {label}"
                + (f" -- {entry['error'][:200]}" if entry.get("error") else ""))
    checked = rec["cases"] + rec["grad"]
    rec["ok"] = bool(checked) and all(e["ok"] for e in checked) and not rec["skipped"]


def merge_shards(parts: list[dict]) -> dict:
    """One correctness record from its shards' records, the cases back in priority order."""
    out = {k: v for k, v in parts[0].items() if k in ("backend", "grad_backend")}
    for kind in ("cases", "grad"):
        out[kind] = sorted((c for p in parts for c in p.get(kind, [])), key=lambda c: c["seed"])
    out["skipped"] = [s for p in parts for s in p.get("skipped", [])]
    out["passed"] = sum(bool(c["ok"]) for c in out["cases"] + out["grad"])
    out["total"] = len(correctness_cases()) + len(grad_cases())  # a killed shard's unstarted cases count too
    bad = [p for p in parts if p.get("status") != "done"]
    out["status"] = bad[0]["status"] if bad else "done"
    out["error"] = "; ".join(f"shard {p.get('shard')}: {p['error']}" for p in parts if p.get("error")) or None
    out["ok"] = out["passed"] == out["total"] and all(p.get("ok") for p in parts)
    out["wall_s"] = max(p.get("wall_s", 0) for p in parts)
    out["shards"] = [{k: p.get(k) for k in ("shard", "status", "wall_s", "error", "output_tail") if k in p}
                     for p in parts]
    return out


# ------------------------------------------------------------------------------------------------ 2. scale
def reference_blocked(q, g, block: int, **params):
    """The reference's dense scores [Q, N] in gallery blocks (float32: fp16 sets, so the products are exact)."""
    return torch.cat([set_similarity_reference(q, g[n0:n0 + block], **params)
                      for n0 in range(0, g.shape[0], block)], dim=1)


def section_scale(rec: Record, budget: Budget) -> None:
    search, scores, backend = search_backend()
    n, d = size(1_100_000, 48), size(512, 32)
    # item 838,860 straddles element 2^31 (offsets that wrap in int32); 65,535 x 16 items was the dense grid's limit
    int32_edge, grid_edge = size(2 ** 31 // (KSET * d), 20), size(65535 * 16, 36)
    planted = [0, int32_edge // 2, int32_edge - 1, int32_edge, int32_edge + 1, (grid_edge + n) // 2, n - 1]
    rec.update(backend=backend, N=n, K=KSET, D=d, dtype="fp16", elements=n * KSET * d, int32_edge_item=int32_edge,
               dense_grid_edge_item=grid_edge, planted=planted, checks={})
    if DEVICE == "cuda":
        need, free = n * KSET * d * 2 * 1.5, torch.cuda.mem_get_info()[0]
        if free < need:
            raise RuntimeError(f"needs {need / 1e9:.1f} GB free on the device, has {free / 1e9:.1f}")
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    g = unit_sets(n, KSET, d, torch.float16, DEVICE, gen)
    q = unit_sets(len(planted), KSET, d, torch.float16, DEVICE, gen)
    for j, idx in enumerate(planted):  # a near-copy of query j (cosines ~0.995): score ~2, random items < 0.5
        noise = 0.1 / math.sqrt(d) * torch.randn(KSET, d, device=DEVICE, generator=gen)
        g[idx] = F.normalize(q[j].float() + noise, dim=-1).half()
    sync()
    log(f"scale: gallery {g.numel() * 2 / 1e9:.2f} GB ready; reference over every item")
    ref = reference_blocked(q, g, size(100_000, 16), alpha=ALPHA)
    want = torch.tensor(planted)
    for k in (TOPK, 100):  # 100 > 64: the dense path, past the old grid limit too
        if budget.left() < 5:
            rec["checks"][f"search_k{k}"] = {"ok": False, "error": "skipped: past the section's budget"}
            continue
        entry = {}
        try:
            entry["first_call_s"] = call_seconds(lambda: search(q, g, k))
            s, i = search(q, g, k)
            entry.update(topk_report(s, i, ref, k, SCALE_ATOL))
            entry["rank1"] = i[:, 0].tolist()
            entry["rank1_is_planted"] = bool(torch.equal(i[:, 0].cpu(), want))
            planted_ref = ref.cpu()[torch.arange(len(planted)), want].double()
            entry["rank1_score_err"] = float((s[:, 0].cpu().double() - planted_ref).abs().max())
            entry["ok"] = bool(entry["ok"] and entry["rank1_is_planted"] and entry["rank1_score_err"] <= SCALE_ATOL)
        except Exception as e:  # noqa: BLE001 - the other checks still run
            entry.update(ok=False, error=error_text(e), trace=traceback.format_exc()[-1500:])
        rec["checks"][f"search_k{k}"] = entry
        rec.save()
        log(f"scale: search k={k} {'ok' if entry['ok'] else 'FAILED'} {entry.get('error', '')[:200]}")
    entry = {}
    try:
        entry["first_call_s"] = call_seconds(lambda: scores(q, g))
        dense = scores(q, g)
        entry.update(dense_report(dense, ref, SCALE_ATOL))
        if entry["shape_ok"]:
            err = (dense.double() - ref.double()).abs().amax(0).cpu()
            entry["max_err_by_region"] = {
                f"items < {int32_edge}": float(err[:int32_edge].max()),
                f"{int32_edge} <= items < {grid_edge}": float(err[int32_edge:grid_edge].max()),
                f"items >= {grid_edge}": float(err[grid_edge:].max())}
            entry["argmax_is_planted"] = bool(torch.equal(dense.argmax(1).cpu(), want))
            entry["ok"] = bool(entry["ok"] and entry["argmax_is_planted"])
    except Exception as e:  # noqa: BLE001
        entry.update(ok=False, error=error_text(e), trace=traceback.format_exc()[-1500:])
    rec["checks"]["set_scores"] = entry
    log(f"scale: set_scores {'ok' if entry['ok'] else 'FAILED'} {entry.get('error', '')[:200]}")
    rec["ok"] = all(e["ok"] for e in rec["checks"].values())


# ------------------------------------------------------------------------------------------------ 3. timings
def block_topk(q, gb, k):
    """The torch baseline's unit of work: dense reference scores of a gallery block and their top-k."""
    return set_similarity_reference(q, gb, alpha=ALPHA).topk(k, dim=1)


def blocked_topk(fn, q, g, k, block):
    """Top-k over the gallery, `fn` (block_topk, eager or compiled) per block, merged: memory bounded by the block."""
    parts = [fn(q, g[n0:n0 + block], k) for n0 in range(0, g.shape[0], block)]
    s, pos = torch.cat([p[0] for p in parts], dim=1).topk(k, dim=1)
    offsets = [p[1] + n0 for p, n0 in zip(parts, range(0, g.shape[0], block))]
    return s, torch.cat(offsets, dim=1).gather(1, pos)


def rates(ms: float, row: dict) -> dict:
    return {"ms": ms, "GB_per_s": row["gallery_bytes"] / ms / 1e6, "TFLOP_per_s": row["flop"] / ms / 1e9,
            "over_floor": ms / row["floor_ms"] if row.get("floor_ms") else None}


def section_timings(rec: Record, budget: Budget) -> None:
    ns, qs, d = size((100_000, 1_000_000), (64, 128)), size((1, 64), (1, 4)), size(512, 32)
    rec.update(K=KSET, D=d, dtype="fp16", k=TOPK, alpha=ALPHA, floor={}, rows=[],
               gallery_bytes_note="bytes read: the fp16 gallery once; floor = half a device-to-device copy "
                                  "of it (the copy reads and writes), measured in this run")
    gen = torch.Generator(device=DEVICE).manual_seed(3)
    g_all = unit_sets(max(ns), KSET, d, torch.float16, DEVICE, gen)
    dst = torch.empty_like(g_all)
    for n in ns:
        ms = bench(lambda: dst[:n].copy_(g_all[:n]))
        rec["floor"][str(n)] = {"copy_ms": ms, "copy_GB_per_s": 2 * n * KSET * d * 2 / ms / 1e6, "floor_ms": ms / 2}
    dst = None  # its 5 GB back before the timings
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    rec.save()
    log(f"timings: copy floor {json.dumps(rec['floor'])}")
    # blocks that divide every N (the compiled baseline then compiles once per Q); the [Q, block, 5, 5]
    # float32 cosines and their temporaries stay under ~1 GB
    blocks = {qn: size(100_000 // max(1, qn // 8), 32) for qn in qs}
    rows = {}
    for qn in qs:
        for n in ns:
            rows[n, qn] = {"N": n, "Q": qn, "block": blocks[qn], "gallery_bytes": n * KSET * d * 2,
                           "flop": 2 * qn * KSET * n * KSET * d, "floor_ms": rec["floor"][str(n)]["floor_ms"],
                           "methods": {}}
    rec["rows"] = list(rows.values())
    # eager on CPU: the tracing is checked, no C++ build
    compiled = torch.compile(block_topk, dynamic=False, backend=size("inductor", "eager"))
    for phase in ("kernels.search", "torch eager (blocked)", "torch.compile (blocked)"):
        for (n, qn), row in rows.items():
            g, q = g_all[:n], unit_sets(qn, KSET, d, torch.float16, DEVICE, gen)
            fn = {"kernels.search": lambda: kernels.search(q, g, TOPK),
                  "torch eager (blocked)": lambda: blocked_topk(block_topk, q, g, TOPK, blocks[qn]),
                  "torch.compile (blocked)": lambda: blocked_topk(compiled, q, g, TOPK, blocks[qn])}[phase]
            row["methods"][phase] = entry = {}
            skip = (compile_skip_reason(rec, row, budget) if phase == "torch.compile (blocked)"
                    else "past the section's budget" if budget.left() < 5 else None)
            if skip:
                entry["skipped"] = skip
            else:
                try:
                    entry["first_call_s"] = call_seconds(fn)
                    slow = phase != "kernels.search"
                    entry.update(rates(bench(fn, warmup=5 if slow else 25, rep=50 if slow else 100), row))
                except torch.OutOfMemoryError as e:
                    entry["error"] = f"out of memory: {str(e)[:300]}"
                except Exception as e:  # noqa: BLE001 - the other rows still run
                    entry.update(error=error_text(e), trace=traceback.format_exc()[-1500:])
                if DEVICE == "cuda":
                    torch.cuda.empty_cache()
            rec.save()
            log(f"timings: N={n:,} Q={qn} {phase}: {json.dumps(entry)[:300]}")
    rec["ok"] = all(isinstance(r["methods"].get(m, {}).get("ms"), float)
                    for r in rec["rows"] for m in ("kernels.search", "torch eager (blocked)"))


def compile_skip_reason(rec: Record, row: dict, budget: Budget) -> str | None:
    """torch.compile compiles once per Q (the block shape is the same at every N), at its first call, which
    cannot be interrupted: start a compile only with time to spare, and time a larger N only if its cost,
    scaled from the smaller N at the same Q, fits the budget."""
    done = [r for r in rec["rows"] if r["Q"] == row["Q"]
            and isinstance(r["methods"].get("torch.compile (blocked)", {}).get("ms"), float)]
    if not done and DEVICE == "cuda" and budget.left() < 25:
        return f"only {budget.left():.0f} s of the section's budget left: not enough to compile"
    if done:
        est_s = 12 * done[-1]["methods"]["torch.compile (blocked)"]["ms"] * row["N"] / done[-1]["N"] / 1e3
        if est_s > budget.left() - 5:  # do_bench runs it about a dozen times
            return f"estimated {est_s:.0f} s to time (scaled from N={done[-1]['N']:,}): past the budget"
    elif budget.left() < 5:
        return "past the section's budget"
    return None


# ------------------------------------------------------------------------------------------------ 4-5. the model
def build_model():
    """The project's ESA model on its ViT-B/16 384x128 config (random init: speed does not depend on the weights)."""
    from trainer.model import load_config
    from trainer.retriever import Retriever
    config = load_config(size("vit-b16-384x128", "tiny"))
    eot = config.text.vocab_size - 1
    return Retriever(config, "esa", NUM_CLASSES, eot), config, eot


def example_batch(config, eot, batch, gen):
    h, w = config.vision.image_size
    pixels = torch.randn(batch, 3, h, w, generator=gen)
    ids = torch.randint(1, eot, (batch, config.text.context_length), dtype=torch.int32, generator=gen)
    ids[torch.arange(batch), torch.randint(8, 60, (batch,), generator=gen)] = eot
    return pixels.to(DEVICE), ids.to(DEVICE)


def section_encoders(rec: Record, budget: Budget) -> None:
    model, config, eot = build_model()
    dtype = size(torch.float16, torch.float32)  # CPU (smoke) has no fast fp16
    model = model.to(DEVICE, dtype).eval()
    rec.update(config=size("vit-b16-384x128", "tiny"), method="esa", dtype=str(dtype), rows=[])
    gen = torch.Generator().manual_seed(4)
    for encoder in ("image", "text"):
        for batch in size((1, 32), (1, 2)):
            entry = {"encoder": encoder, "batch": batch}
            if budget.left() < 3:
                entry["skipped"] = "past the section's budget"
            else:
                pixels, ids = example_batch(config, eot, batch, gen)
                # fp32 pixels, as served: the image tower casts them
                fn = (lambda: model.encode_image(pixels)) if encoder == "image" else (lambda: model.encode_text(ids))
                try:
                    with torch.inference_mode():
                        entry["out_shape"] = list(fn().shape)
                        entry["ms"] = bench(fn)
                    entry["items_per_s"] = batch / entry["ms"] * 1e3
                except Exception as e:  # noqa: BLE001
                    entry.update(error=error_text(e), trace=traceback.format_exc()[-1500:])
            rec["rows"].append(entry)
            rec.save()
            log(f"encoders: {json.dumps(entry)[:300]}")
    rec["ok"] = all(isinstance(r.get("ms"), float) for r in rec["rows"])


def section_train_step(rec: Record, budget: Budget) -> None:
    model, config, eot = build_model()
    model = model.to(DEVICE).train()
    batch, per_id = size(64, 8), 4  # fit.py's batch: 16 identities x 4 captions
    amp = DEVICE == "cuda"  # as fit.py: bf16 autocast where supported, else fp16 with a loss scaler
    amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)  # fit.py: one group per parameter, same update
    rec.update(config=size("vit-b16-384x128", "tiny"), method="esa", batch=batch, num_classes=NUM_CLASSES,
               amp=str(amp_dtype) if amp else "off", optimizer="Adam", grad_clip=5.0,
               parameters=sum(p.numel() for p in model.parameters()))
    gen = torch.Generator().manual_seed(5)
    pixels, ids = example_batch(config, eot, batch, gen)
    labels = torch.arange(batch // per_id).repeat_interleave(per_id).to(DEVICE)
    losses = {}

    def step():
        nonlocal losses
        with torch.autocast(DEVICE, dtype=amp_dtype, enabled=amp):
            losses = model(pixels, ids, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(sum(losses.values())).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        scaler.step(optimizer)
        scaler.update()

    rec["first_step_s"] = call_seconds(step)  # includes the Triton gradient kernels' compile
    rec["second_step_s"] = call_seconds(step)
    rec.save()
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps = max(1, min(size(10, 1), int((budget.left() - 2) / max(rec["second_step_s"], 1e-3))))
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()  # the only sync point of the timed loop
    rec["steps_timed"] = steps
    rec["ms_per_step"] = (time.perf_counter() - t) / steps * 1e3
    rec["images_per_s"] = batch / rec["ms_per_step"] * 1e3
    if DEVICE == "cuda":
        rec["peak_memory_GB"] = torch.cuda.max_memory_allocated() / 1e9
    rec["losses"] = {k: float(v.detach()) for k, v in losses.items()}
    rec["ok"] = all(math.isfinite(v) for v in rec["losses"].values())
    log(f"train_step: {rec['ms_per_step']:.1f} ms/step, losses {rec['losses']}")


SECTION_FNS = {"correctness": section_correctness, "scale": section_scale, "timings": section_timings,
               "encoders": section_encoders, "train_step": section_train_step}


def run_child() -> int:
    rec = Record(ARGS.section_out)
    torch.manual_seed(0)
    torch.set_float32_matmul_precision("highest")  # the fp32 reference in IEEE fp32, never TF32
    try:
        SECTION_FNS[ARGS.section](rec, Budget(ARGS.stop_at))
        rec["status"] = "done"
    except Exception as e:  # noqa: BLE001 - recorded; the parent carries on with the next section
        rec.update(status="error", ok=False, error=error_text(e), trace=traceback.format_exc()[-3000:])
        log(f"{ARGS.section}: ERROR {rec['error'][:300]}")
    rec.save()
    return 0


# ------------------------------------------------------------------------------------------------ the parent
def environment() -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "smoke": ARGS.smoke,
           "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    try:
        env["triton"] = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        env["triton"] = None
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "kernels"],
                               capture_output=True, text=True, timeout=10)
        env["git_commit"] = head.stdout.strip() or None
        env["kernels_modified_since_commit"] = bool(dirty.stdout.strip()) if head.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    if DEVICE == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, capability=list(torch.cuda.get_device_capability(0)),
                   sm_count=props.multi_processor_count, memory_GB=round(props.total_memory / 1e9, 1),
                   cuda=torch.version.cuda)
    else:
        env.update(device="cpu (smoke: Triton interpreter)", capability=None, sm_count=None)
    env["device_slug"] = re.sub(r"[^a-z0-9]+", "_", env["device"].lower()).strip("_")
    return env


class Child:
    """One section (or correctness shard) in a child process, in its own process group (killed whole at its
    hard limit); its output is relayed live and its last lines kept for the record."""

    def __init__(self, name: str, budget_s: float, hard_s: float, path: Path, shard: str = "0/1"):
        self.path, self.hard_s, self.start = path, hard_s, time.time()
        path.unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--section-out", str(path),
               "--shard", shard, "--stop-at", repr(self.start + budget_s), "--t0", repr(T0)]
        self.proc = subprocess.Popen(cmd + (["--smoke"] if ARGS.smoke else []), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"), process_group=0)
        self.tail = collections.deque(maxlen=40)
        self.reader = threading.Thread(target=self._relay, daemon=True)
        self.reader.start()

    def _relay(self) -> None:
        for line in self.proc.stdout:
            print(line, end="", flush=True)
            self.tail.append(line.rstrip())

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def finish(self) -> dict:
        """Waits up to the hard limit; returns the record the child saved, its fate added."""
        timed_out = False
        try:
            self.proc.wait(timeout=max(0.0, self.start + self.hard_s - time.time()))
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            self.kill()
        self.reader.join(timeout=5)
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {"ok": False}
        self.path.unlink(missing_ok=True)
        data["wall_s"] = round(time.time() - self.start, 1)
        if timed_out:
            data.update(status="timeout", ok=False,
                        error=f"killed after {self.hard_s:.0f} s (its hard limit); what it saved before is kept")
        elif data.get("status") != "done":
            data["status"] = data.get("status") if data.get("status") == "error" else "crashed"
            data["ok"] = False
            data["error"] = data.get("error") or f"the child exited with status {self.proc.returncode} before finishing"
        if data["status"] != "done":
            data["output_tail"] = list(self.tail)
        return data


def run_section(name: str, budget_s: float, hard_s: float, out: Path) -> dict:
    # the child's own record, rewritten as it goes: where to look if this parent is killed mid-section
    part = lambda i: out.with_name(f"{out.stem}.{name}{i}.part.json")  # noqa: E731
    if name != "correctness":
        return Child(name, budget_s, hard_s, part("")).finish()
    n = 2 if ARGS.smoke else CORRECTNESS_SHARDS
    children = []
    try:
        children = [Child(name, budget_s, hard_s, part(i), shard=f"{i}/{n}") for i in range(n)]
        return merge_shards([c.finish() for c in children])
    finally:
        for c in children:
            c.kill()


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    sections = report["sections"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [2, 1]})
    rows = sections.get("timings", {}).get("rows", [])
    series = ["kernels.search", "torch eager (blocked)", "torch.compile (blocked)", "copy floor"]
    if rows:
        x = np.arange(len(rows))
        width = 0.8 / len(series)
        for i, name in enumerate(series):
            vals = [r.get("floor_ms") if name == "copy floor" else r["methods"].get(name, {}).get("ms") for r in rows]
            ax1.bar(x + (i - (len(series) - 1) / 2) * width, [v if isinstance(v, float) else np.nan for v in vals],
                    width, label=name)
        ax1.set_xticks(x, [f"N={r['N']:,}\nQ={r['Q']}" for r in rows], fontsize=8)
        ax1.set_yscale("log")
        ax1.legend(fontsize=7)
    ax1.set_ylabel("ms per search (median)")
    d = sections.get("timings", {}).get("D")
    ax1.set_title(f"top-{TOPK} search, K={KSET} x D={d} fp16 sets (floor: half a copy of the gallery)", fontsize=9)
    enc = [r for r in sections.get("encoders", {}).get("rows", []) if isinstance(r.get("ms"), float)]
    ax2.bar(range(len(enc)), [r["ms"] for r in enc], color="tab:purple")
    ax2.set_xticks(range(len(enc)), [f"{r['encoder']}\nbatch {r['batch']}" for r in enc], fontsize=8)
    ax2.set_ylabel("ms per batch (median)")
    e = sections.get("encoders", {})
    ax2.set_title(f"encoders (ESA, {e.get('config')}, {e.get('dtype')})", fontsize=9)
    c, s, t = sections.get("correctness", {}), sections.get("scale", {}), sections.get("train_step", {})
    step = f"{t['ms_per_step']:.0f} ms/step" if isinstance(t.get("ms_per_step"), float) else "n/a"
    mem = f", {t['peak_memory_GB']:.1f} GB peak" if isinstance(t.get("peak_memory_GB"), float) else ""
    fig.suptitle(f"gpu_check on {report['environment']['device']}: correctness {c.get('passed', 0)}/"
                 f"{c.get('total', 0)} ok; N={s.get('N', 0):,} planted neighbours {'ok' if s.get('ok') else 'NOT ok'}; "
                 f"train step (batch {t.get('batch')}, AMP {t.get('amp')}) {step}{mem}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_parent() -> int:
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here: run it on an H100/H200, or --smoke --out PATH for the CPU logic check",
              file=sys.stderr)
        return 2
    env = environment()
    out = ARGS.out or RESULTS / f"gpu_{env['device_slug']}.json"
    report = {"benchmark": "gpu_check", "environment": env, "sections": {}}
    t_end = T0 + ARGS.deadline
    log(f"gpu_check on {env['device']} (torch {env['torch']}, triton {env['triton']}): writing {out}")
    for i, name in enumerate(ARGS.sections):
        soft = SMOKE_BUDGET_S if ARGS.smoke else BUDGET_S[name]
        hard = max(1.0, min(soft + GRACE_S, t_end - time.time() - RESERVE_S * (len(ARGS.sections) - i - 1)))
        budget = max(0.0, min(soft, hard - GRACE_S))
        log(f"{name}: start (budget {budget:.0f} s, killed at {hard:.0f} s)")
        try:
            report["sections"][name] = run_section(name, budget, hard, out)
        except Exception as e:  # noqa: BLE001 - the parent itself must always reach the report
            report["sections"][name] = {"status": "error", "ok": False, "error": error_text(e)}
        sec = report["sections"][name]
        report["wall_s"] = round(time.time() - T0, 1)
        report["ok"] = all(s.get("ok") for s in report["sections"].values())
        write_json(out, report)
        log(f"{name}: {sec['status']}, {'ok' if sec.get('ok') else 'NOT ok'} ({sec.get('wall_s')} s)"
            + (f" -- {sec['error'][:300]}" if sec.get("error") else ""))
    try:
        plot(report, out.with_suffix(".png"))
        report["plot"] = out.with_suffix(".png").name
    except Exception as e:  # noqa: BLE001 - the JSON matters more than the picture
        report["plot_error"] = error_text(e)
    report["wall_s"] = round(time.time() - T0, 1)
    write_json(out, report)
    log(f"done in {report['wall_s']} s: {'every check passed' if report['ok'] else 'NOT all ok'}; {out}")
    return 0 if report["ok"] else 1


def main() -> int:
    if ARGS.section:
        return run_child()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `timeout` still runs the children's kill
    return run_parent()


if __name__ == "__main__":
    sys.exit(main())
