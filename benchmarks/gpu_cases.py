"""gpu_check's checked sections: 1. correctness (kernels.search / set_scores and the gradient against
set_similarity_reference at awkward sizes) and 2. scale (planted neighbours in a 1.1M-item gallery).
A library module of benchmarks/ (never run).
"""
from __future__ import annotations

import importlib
import math
import sys
import time
import traceback

import torch
import torch.nn.functional as F

import kernels
from gpu_runtime import (ALPHA, KSET, RUN, TOPK, Budget, Record, call_seconds, error_text, exact_sets, log, size,
                         sync, torch_dtype, unit_sets)
from kernels.quantize import dequantize_sets, quantize_sets
from kernels.set_similarity import set_similarity_reference

# kernels' public API is used everywhere else; these two module names are the ones to change if kernels/ renames them.
SCORES_AUTOGRAD_MODULE = "kernels.scores_autograd"  # set_scores_with_grad: the differentiable scores
TRITON_SEARCH_MODULE = "kernels.search_triton"  # search/scores(q, g, [k,] alpha, weight, margin, mode): --smoke only
ATOL = {"fp16": 2e-4, "bf16": 2e-4, "fp32": 2e-5, "int8": 2e-4}  # int8: against its dequantized sets  # scores, products of the same rounded inputs in float64
GRAD_RTOL = {"fp16": 1e-2, "bf16": 1e-2, "fp32": 1e-4}  # gradients relative to their largest entry
SCALE_ATOL = 1e-3  # N = 1.1M: the reference is blocked float32 there


# ------------------------------------------------------------------------------------------------ backends
def search_backend() -> tuple:
    """(search, set_scores, description). On the GPU the public kernels API (the compiled Triton kernels).
    Under --smoke the dispatcher would send CPU tensors to the blocked torch path, so the Triton module is
    called directly, through the interpreter; if kernels/ has renamed it, the CPU path stands in, said so."""
    if not RUN.smoke:
        return kernels.search, kernels.set_scores, "kernels.search / set_scores (compiled Triton)"
    try:
        mod = importlib.import_module(TRITON_SEARCH_MODULE)
    except ImportError as e:
        return (kernels.search, kernels.set_scores,
                f"kernels' CPU path: {TRITON_SEARCH_MODULE} is not importable ({e}); update TRITON_SEARCH_MODULE")

    def search(q, g, k, alpha=ALPHA, weight=1.0, margin=None, mode="chamfer", allowed=None, scale=None):
        return mod.search(q.to(query_dtype(g)), g, k, alpha, weight, margin, mode, allowed, scale)

    def scores(q, g, alpha=ALPHA, weight=1.0, margin=None, mode="chamfer", scale=None):
        return mod.scores(q.to(query_dtype(g)), g, alpha, weight, margin, mode, scale)
    return search, scores, f"{TRITON_SEARCH_MODULE} through the Triton interpreter"


def topk_report(scores, indices, reference, k, atol, available: int | None = None) -> dict:
    """tests/kernels/test_search.py's check_topk as a report: sorted, unique, in range, equal to the
    reference's top-k up to near-ties (each returned index's reference score is the returned score,
    and the returned scores are the reference's k best). A filter's dropped items score -inf in the
    reference and `available` items are allowed: k' = min(k, available)."""
    kk = min(k, reference.shape[1] if available is None else available)
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
        dict(filtered=True, Q=q65, N=n_big, margin=True, ks=(1, 10, 100)),  # camera/time filters, erasures
        dict(kind="grown", N=size(4097, 33), margin=True, ks=(10, 100)),  # an ingest past a multiple of 16
        dict(dtype="int8", Q=q65, N=n_big, margin=True, ks=(1, 10, 100)),    # 8-bit sets (kernels/quantize.py)
        dict(dtype="int8", Q=1, N=n_big, filtered=True, ks=(1, 10)),
    ]
    if RUN.device == "cuda" and torch.cuda.device_count() > 1:  # tensors on cuda:1, the current device cuda:0
        variants.append(dict(device=1, Q=q64, N=n_big, filtered=True))
    return [dict(base, **v, seed=1000 + i) for i, v in enumerate(variants)]


def case_variants(c: dict) -> set:
    """The search kernel variants a case compiles (kernels.search_triton.variants: one config each)."""
    if c["N"] == 0:
        return set()
    from kernels.search_triton import variants
    out = set()
    for k in (*c["ks"], None):  # None: set_scores
        out |= variants(c["Q"], c["Kq"], c["Kg"], c["D"], torch_dtype(c["dtype"]), None if k is None else min(k, c["N"]),
                        c["alpha"], c["weight"], c["mode"], c.get("filtered", False))
    return out


def assign_shards(cases: list[dict], n: int) -> list[list[dict]]:
    """Cases to n side-by-side processes so that compiles (the section's cost) are balanced and a
    variant two cases share is compiled by one process: each case in priority order goes where it
    adds least to the largest shard's compile count."""
    shards, compiled = [[] for _ in range(n)], [set() for _ in range(n)]
    for c in cases:
        v = case_variants(c)
        i = min(range(n), key=lambda j: (max(len(compiled[j] | v), *(len(x) for x in compiled)), len(compiled[j] | v), j))
        shards[i].append(c)
        compiled[i] |= v
    return shards


def plan(n_shards: int) -> dict:
    """What the correctness section will compile, printed before it starts: cases, distinct
    variants, the busiest shard's compiles."""
    cases = correctness_cases()
    per_shard = [len(set().union(*map(case_variants, shard))) for shard in assign_shards(cases, n_shards)]
    return dict(cases=len(cases), grad_cases=len(grad_cases()), shards=n_shards,
                search_variants=len(set().union(*map(case_variants, cases))), variants_per_shard=per_shard)


def compiled_variants() -> int | None:
    """Search kernel variants compiled in this process so far (the JIT's cache entries); None under
    the interpreter, which compiles nothing."""
    mod = sys.modules.get(TRITON_SEARCH_MODULE)
    try:
        return sum(len(cache[0]) for f in (mod._topk_kernel, mod._dense_kernel) for cache in f.device_caches.values())
    except AttributeError:
        return None


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
    if dtype == torch.int8:  # an 8-bit gallery: its codes and their row scales
        g, scale = quantize_sets(g)
        return q.half(), g, margin, scale
    return q.to(dtype), g.to(dtype), margin, None


def query_dtype(g: torch.Tensor) -> torch.dtype:
    """What kernels.search casts queries to: the gallery's dtype, float16 for an 8-bit gallery."""
    return torch.float16 if g.dtype == torch.int8 else g.dtype


def check_case(c: dict, backend) -> dict:
    search, scores, _ = backend
    q, g, margin, scale = case_inputs(c)
    device = f"cuda:{c['device']}" if "device" in c else RUN.device
    qd, gd, md = q.to(device), g.to(device), None if margin is None else margin.to(device)
    sd = None if scale is None else scale.to(device)
    params = dict(alpha=c["alpha"], weight=c["weight"], mode=c["mode"], **({} if sd is None else {"scale": sd}))
    out = {"N": g.shape[0], "search": {}}
    if c["kind"] == "grown":  # served one ingest ago (N - 1 items, a view of the same buffer): compiles then, none now
        for k in c["ks"]:
            search(qd, gd[:-1], k, margin=md[:-1], **params)
        before = compiled_variants()
    # queries are cast as kernels.search casts them, an 8-bit gallery is its dequantized sets: the reference
    # sees the same values
    values = gd.double() if sd is None else dequantize_sets(gd, sd).double()
    ref = set_similarity_reference(qd.to(query_dtype(gd)).double(), values,
                                   margin=None if md is None else md.double(),
                                   **{k: v for k, v in params.items() if k != "scale"})
    atol = ATOL[c["dtype"]] * max(1.0, float(ref.abs().max()) if ref.numel() else 1.0)
    allowed, available, ranked = None, None, ref
    if c.get("filtered"):  # about half the items, as a camera or time window keeps
        allowed = torch.rand(g.shape[0], generator=torch.Generator().manual_seed(c["seed"])) < 0.5
        available, ranked = int(allowed.sum()), ref.masked_fill(~allowed.to(ref.device), float("-inf"))
        allowed = allowed.to(device)
    dense = scores(qd, gd, margin=md, **params)
    out.update(atol=atol, dense=dense_report(dense, ref, atol))
    for k in c["ks"]:
        s, i = search(qd, gd, k, margin=md, allowed=allowed, **params)
        rep = topk_report(s, i, ranked, k, atol, available)
        if c["kind"] == "ties":
            rep["ties"] = tie_report(s, i, g)
            rep["ok"] = rep["ok"] and rep["ties"]["ok"]
        if k == c["ks"][0]:
            s2, i2 = search(qd, gd, k, margin=md, allowed=allowed, **params)
            rep["deterministic"] = bool(torch.equal(s.cpu(), s2.cpu()) and torch.equal(i.cpu(), i2.cpu()))
            rep["ok"] = rep["ok"] and rep["deterministic"]
        out["search"][str(k)] = rep
    out["ok"] = out["dense"]["ok"] and all(r["ok"] for r in out["search"].values())
    if c["kind"] == "grown" and before is not None:
        out["compiled_after_growth"] = compiled_variants() - before
        out["ok"] = out["ok"] and out["compiled_after_growth"] == 0
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
    q = unit_sets(c["Q"], c["Kq"], c["D"], dtype, "cpu", gen).to(RUN.device)
    g = unit_sets(c["N"], c["Kg"], c["D"], dtype, "cpu", gen).to(RUN.device)
    margin = (0.2 * torch.rand(c["N"], generator=gen)).to(RUN.device) if c["margin"] else None
    target = torch.randn(c["Q"], c["N"], generator=gen).to(RUN.device)
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


def section_correctness(rec: Record, budget: Budget, shard: str = "0/1") -> None:
    """This process's share of the cases: every n-th from the i-th, for shard "i/n"."""
    backend = search_backend()
    rec.update(backend=backend[2], cases=[], grad=[], skipped=[])
    grad_fn, grad_error = None, None
    try:
        grad_fn = importlib.import_module(SCORES_AUTOGRAD_MODULE).set_scores_with_grad
    except (ImportError, AttributeError) as e:
        grad_error = (f"{SCORES_AUTOGRAD_MODULE}.set_scores_with_grad is not importable ({e}); "
                      "update SCORES_AUTOGRAD_MODULE")
    rec["grad_backend"] = grad_error or f"{SCORES_AUTOGRAD_MODULE}.set_scores_with_grad on {RUN.device}"
    interpreter = "interpreter" in backend[2]
    i, n = map(int, shard.split("/"))
    rec["shard"] = shard
    for kind, cases, run in (("cases", assign_shards(correctness_cases(), n)[i], lambda c: check_case(c, backend)),
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
            log(f"correctness[{shard}]: {kind} {'ok' if entry['ok'] else 'FAILED'} ({entry['seconds']} s) {label}"
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
    if RUN.device == "cuda":
        need, free = n * KSET * d * 2 * 1.5, torch.cuda.mem_get_info()[0]
        if free < need:
            raise RuntimeError(f"needs {need / 1e9:.1f} GB free on the device, has {free / 1e9:.1f}")
    gen = torch.Generator(device=RUN.device).manual_seed(1)
    g = unit_sets(n, KSET, d, torch.float16, RUN.device, gen)
    q = unit_sets(len(planted), KSET, d, torch.float16, RUN.device, gen)
    for j, idx in enumerate(planted):  # a near-copy of query j (cosines ~0.995): score ~2, random items < 0.5
        noise = 0.1 / math.sqrt(d) * torch.randn(KSET, d, device=RUN.device, generator=gen)
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
