"""Compile the search and gradient kernels ahead of time for sm_90 / sm_80, with no GPU, and
read the machine code: the compile gate (CI: --set ci) and the full sweep (a benchmark).

    .venv/bin/python benchmarks/kernels_aot.py [--set ci|table|int8|full] [--arch 90 80] [--jobs 2]
        [--dtype fp16 int8] [--out benchmarks/results/kernels_sm90.json]

For every launch shape that matters (dtype, K, D, Q, mode, margin, k) it takes the
constexprs the launcher would pass (kernels.search_triton.launch_meta: one definition), the
configs the autotuner's prune keeps (kernels.search_triton.prune), binds them through the
JIT's own argument binder (so signature, specialisations and alignment are those of a real
launch) and runs triton.compile down to a cubin. Per config it records registers, spills
and stack (ptxas -v, triton's own ptxas), shared memory (over the device's per-block limit
cannot launch), the MMA kind (wgmma / mma.sync / FMA) and SASS warp-instructions per
gallery item (and the gallery bytes an item reads: its sets, an 8-bit set's scales, margin and
filter byte where used): the tile loop's body plus its inner D loops times their trip count, times
warps, over BN items, times the query blocks (`per_item_steady`), plus the top-k insertion
loop weighted by its expected passes on random scores at N = 1M (`per_item_expected`).
Estimates from compiled code, not timings. Exit status 1 (and every fault listed) when a compile fails, a kept
config exceeds the shared-memory limit, or a kept fp16/bf16 config of K = 5 spills.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32", "int8": "int8"}  # int8: 8-bit sets + scale
SMEM_LIMIT = {90: 227 * 1024, 80: 163 * 1024}  # dynamic shared memory per block
SMS = {90: 132, 80: 108}  # H100 SXM, A100: the launcher sizes top-k splits by SM count
N_ITEMS = 1_000_000
MAX_PER_ITEM_Q64 = 4000  # fp16 K = 5 top-k of 64 queries, unfiltered, on sm_90 (expected, at N = 1M)


def shape(kernel, dtype="fp16", K=5, D=512, Q=1, mode="chamfer", alpha=16.0, margin=False, k=10, filtered=False):
    return dict(kernel=kernel, dtype=dtype, K=K, D=D, Q=Q, mode=mode, alpha=alpha, margin=margin, k=k,
                filtered=filtered)


def shapes(name: str, arch: int) -> list[dict]:
    """`ci`: the headline shapes, every kernel, within a few minutes on 2 cores (sm_80: the
    search at Q = 1 and 64 and the gradient); `table`: one shape per key of the config table
    (kernels/search_configs.json: K = 5 and 1, D = 512, every query-column count, top-k filtered or
    not and dense); `int8`: the 8-bit kernel beside fp16 at the headline shapes; `full`: the sweep,
    on every architecture."""
    if name == "ci" and arch == 90:
        return [shape("topk", Q=1), shape("topk", Q=64), shape("topk", Q=64, filtered=True),
                shape("topk", dtype="bf16", Q=64, margin=True, filtered=True),
                shape("topk", K=1, Q=1, k=1), shape("dense", Q=64), shape("grad_q", Q=512),
                shape("grad_g", Q=512), shape("topk", dtype="int8", Q=1), shape("topk", dtype="int8", Q=64)]
    if name == "ci":
        return [shape("topk", Q=1), shape("topk", Q=64), shape("grad_g", Q=512), shape("topk", dtype="int8", Q=64)]
    if name == "int8":
        return [shape(kernel, dt, Q=Q, filtered=filtered, margin=margin) for dt in ("fp16", "int8")
                for kernel, Q, filtered, margin in (("topk", 1, False, False), ("topk", 64, False, False),
                                                    ("topk", 64, True, True), ("dense", 64, False, False))]
    if name == "table":
        out = []
        for dt, K in (("fp16", 5), ("fp16", 1), ("bf16", 5), ("int8", 5)):
            for Q in ((1, 2, 4, 8) if K == 5 else (8, 16, 32, 64)):  # 8, 16, 32 and 64 query columns
                out += [shape("topk", dt, K, Q=Q), shape("topk", dt, K, Q=Q, filtered=True), shape("dense", dt, K, Q=Q)]
            if K == 5:  # the batch the serving figures quote: the key of Q = 8, eight query blocks
                out += [shape("topk", dt, K, Q=64), shape("topk", dt, K, Q=64, filtered=True)]
        return out
    out = []
    for dt in DTYPES:
        for K in (1, 5):
            for D in (64, 512):
                for Q in (1, 64):
                    out.append(shape("topk", dt, K, D, Q))
                out.append(shape("dense", dt, K, D, 64))
                for kernel in ("grad_q", "grad_g"):
                    out.append(shape(kernel, dt, K, D, 512))
    for Q in (1, 64):
        for var in (dict(mode="maxsim"), dict(alpha=64.0), dict(margin=True), dict(k=1), dict(k=64),
                    dict(filtered=True)):
            out.append(shape("topk", Q=Q, **var))
    out.append(shape("grad_q", Q=512, mode="maxsim"))
    out.append(shape("grad_g", Q=512, mode="maxsim"))
    return out


# ---------------------------------------------------------------------------------------------
# one shape's launches (imports triton: runs in the parent for the plan, in a child to compile)
# ---------------------------------------------------------------------------------------------
def launches(job: dict, arch: int) -> list[dict]:
    """(kernel name, args, kwargs) of every config that fits this shape; `kept`: the one the
    launcher runs on this architecture (kernels.search_configs.config_for: the table's, else the
    fixed rule)."""
    import torch
    from triton.runtime.jit import MockTensor

    from kernels import grad_triton, search_configs, search_triton
    dt = getattr(torch, DTYPES[job["dtype"]])
    Q, K, D, n = job["Q"], job["K"], job["D"], N_ITEMS
    alpha = job["alpha"]
    q, g = MockTensor(torch.float16 if dt == torch.int8 else dt), MockTensor(dt)
    strides = dict(stride_qq=K * D, stride_qk=D, stride_gn=K * D, stride_gk=D)
    if job["kernel"] in ("grad_q", "grad_g"):
        grad_n = 65536
        meta = grad_triton.launch_meta(Q, K, K, D, dt, job["mode"])
        kern = grad_triton.dq_kernel if job["kernel"] == "grad_q" else grad_triton.dg_kernel
        kw = dict(q_ptr=q, g_ptr=g, grad_ptr=MockTensor(torch.float32), out_ptr=MockTensor(torch.float32),
                  Q=Q, N=grad_n, D=D, Kq=K, Kg=K, **strides, alpha_log2=alpha * search_triton.LOG2E, weight=1.0, **meta)
        return [dict(name=job["kernel"], fn=kern, kwargs=kw, config=dict(num_warps=meta["num_warps"],
                                                                           num_stages=meta["num_stages"]),
                     items=None, kept=True)]
    meta = search_triton.launch_meta(Q, K, K, D, dt, alpha, job["mode"])
    # as the launcher passes them: an 8-bit gallery's scale [N, K] and its stride, else None (constexprs)
    scaled = meta["SCALED"]
    kw = dict(q_ptr=q, g_ptr=g, margin_ptr=MockTensor(torch.float32), has_margin=int(job["margin"]),
              scale_ptr=MockTensor(torch.float32) if scaled else None, stride_sn=K if scaled else None,
              flag_ptr=MockTensor(torch.int32), Q=Q, N=n, D=D, **strides,
              alpha_log2=alpha * search_triton.LOG2E, weight=1.0, **meta, GUARDED=False)
    if job["kernel"] == "topk":
        kp = search_triton.kp_for(min(job["k"], n))
        splits = search_triton.splits_for(-(-Q // meta["BQ"]), n, SMS[arch], meta["BQ"] * meta["KQP"])
        kw.update(cand_ptr=MockTensor(torch.int64), SPLITS=splits, KP=kp, HAS_FILTER=job["filtered"],
                  allowed_ptr=MockTensor(torch.uint8) if job["filtered"] else g)
        fn = search_triton._topk_kernel
    else:
        kw.update(out_ptr=MockTensor(torch.float32))
        fn = search_triton._dense_kernel
    cols, elsize = meta["BQ"] * meta["KQP"], 4 if meta["IEEE"] else 2
    chosen = search_configs.config_for(arch, job["kernel"], dt, meta, D, job["filtered"], SMEM_LIMIT[arch])
    key = search_configs.config_key(arch, job["kernel"], dt, meta, D, job["filtered"])
    out = []
    for c in search_configs.CONFIGS:
        if search_configs.fits(c, cols, elsize, SMEM_LIMIT[arch]):
            bn, bd, warps, stages = c
            out.append(dict(name=job["kernel"], fn=fn, kwargs=dict(kw, BN=bn, BD=bd),
                            config=dict(BN=bn, BD=bd, num_warps=warps, num_stages=stages), items=bn, kept=c == chosen,
                            key=key))
    return out


def _ptxas_stats(ptx: str, ptxas: str, arch: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        Path(src).write_text(ptx)
        gpu = "sm_90a" if arch == 90 else f"sm_{arch}"
        log = subprocess.run([ptxas, "-v", f"--gpu-name={gpu}", src, "-o", os.path.join(d, "k.o")],
                             capture_output=True, text=True)
        log = log.stderr + log.stdout
    out = {}
    m = re.search(r"Used (\d+) registers", log)
    out["regs"] = int(m.group(1)) if m else None
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    out["stack_bytes"], out["spill_store_bytes"], out["spill_load_bytes"] = map(int, m.groups()) if m else (0, 0, 0)
    return out


INSN = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?);")


def _sass(cubin: bytes, cuobjdump: str) -> list[tuple[int, str, str]]:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        Path(path).write_bytes(cubin)
        text = subprocess.run([cuobjdump, "-sass", path], capture_output=True, text=True).stdout
    insns = []
    for line in text.splitlines():
        m = INSN.match(line)
        if m:
            body = re.sub(r"^@!?U?P[T0-9]+\s+", "", m.group(2).strip())
            insns.append((int(m.group(1), 16), body.split()[0] if body else "", m.group(2)))
    return insns


def instructions_per_tile(insns, d_trips: int) -> dict:
    """Warp-instructions one warp issues per gallery tile. Loops are backward branches; the
    outermost is the tile loop (top-k) or absent (dense: one tile a program). Inner loops
    that load are the D loops, counted d_trips times (an upper bound: pipelining peels a
    stage into the tile body, counted there); the one that does not is the top-k insertion
    loop, whose passes are data dependent: `steady` is a tile with no insertion and
    `insert_pass` the cost of one pass, for the caller to weigh by the expected passes."""
    loops = []
    for addr, op, text in insns:
        if op.startswith("BRA"):
            m = re.search(r"0x([0-9a-f]+)", text)
            if m and int(m.group(1), 16) < addr:
                loops.append((int(m.group(1), 16), addr))
    loops = sorted(set(loops))
    outer = [lp for lp in loops if any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]
    tile = max(outer, key=lambda lp: lp[1] - lp[0]) if outer else (insns[0][0], insns[-1][0])
    inner = [lp for lp in loops if lp != tile and tile[0] <= lp[0] and lp[1] <= tile[1]]

    def ops_in(lo, hi):
        return [op.split(".")[0] for a, op, _ in insns if lo <= a <= hi]

    loads = {"LDG", "LDGSTS", "HGMMA", "HMMA", "UTMALDG"}
    d_loops = [lp for lp in inner if loads & set(ops_in(*lp))]
    insert = [lp for lp in inner if lp not in d_loops]
    body = sum(1 for a, _, _ in insns if tile[0] <= a <= tile[1] and not any(lo <= a <= hi for lo, hi in inner))
    steady = body + sum(len(ops_in(*lp)) for lp in d_loops) * d_trips
    ops = collections.Counter(ops_in(*tile))
    return dict(steady=steady, insert_pass=sum(len(ops_in(*lp)) for lp in insert), d_loops=len(d_loops),
                tile_loop=bool(outer), sass_total=len(insns),
                ops={k: ops[k] for k in ("HGMMA", "HMMA", "FFMA", "MUFU", "LDG", "LDGSTS", "STL", "LDL", "BAR")})


def insertion_passes(tiles: int, bn: int, bq: int, kp: int, seed: int = 0) -> float:
    """Mean insertion passes per tile of one top-k program over `tiles` tiles of random
    scores (a pass per new entry of the query that gains most in the tile): the weight of
    `insert_pass`. Gallery order is random with respect to a query, so this is the typical
    case; a gallery sorted by ascending score would insert on every tile."""
    import numpy as np
    s = np.random.default_rng(seed).random((tiles * bn, bq))
    passes = 0
    for q in range(bq):
        col, held = s[:, q], np.sort(s[:kp, q])  # the first tile fills the set
        counts = np.zeros(tiles)
        counts[0] = min(kp, bn)
        floor = held[0]
        for t in range(1, tiles):
            new = np.sort(col[t * bn:(t + 1) * bn])[::-1]
            gained = 0
            for x in new:
                if x <= floor:
                    break
                held[0] = x
                held.sort()
                floor = held[0]
                gained += 1
            counts[t] = gained
        passes = np.maximum(passes, counts)
    return float(np.mean(passes))


def mma_kind(ttgir: str) -> str:
    if "ttng.warp_group_dot" in ttgir:
        return "wgmma"
    return "mma.sync" if "nvidia_mma<{versionMajor = 2" in ttgir else "FMA"


def bytes_per_item(job: dict) -> int:
    """Bytes of HBM one gallery item costs a search (read once per query block; more query blocks
    read it again, mostly from L2): its set, an 8-bit set's float32 row scales, margin, filter byte."""
    size = {"fp16": 2, "bf16": 2, "fp32": 4, "int8": 1}[job["dtype"]]
    return (job["K"] * job["D"] * size + 4 * job["K"] * (job["dtype"] == "int8") + 4 * job["margin"]
            + job["filtered"])


def compile_one(job: dict, index: int, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature
    launch = launches(job, arch)[index]
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    ptxas = tools / "ptxas-blackwell" if (tools / "ptxas-blackwell").exists() else tools / "ptxas"
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    fn = launch["fn"]
    kw = dict(launch["kwargs"], num_warps=launch["config"]["num_warps"], num_stages=launch["config"]["num_stages"])
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, opts = binder(**kw)
    options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound, spec, opts)
    res = dict(job=job, arch=arch, config=launch["config"], kept=launch["kept"], key=launch.get("key"),
               bytes_per_item=bytes_per_item(job))
    t0 = time.time()
    try:
        ck = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    except Exception as e:  # noqa: BLE001 - every failure is a finding of the gate
        return dict(res, status="FAILED", error=f"{type(e).__name__}: {e}"[-2000:])
    res.update(status="ok", compile_s=round(time.time() - t0, 1), shared_bytes=ck.metadata.shared,
               num_warps=ck.metadata.num_warps, mma=mma_kind(ck.asm["ttgir"]),
               **_ptxas_stats(ck.asm["ptx"], str(ptxas), arch))
    if launch["items"]:
        d_trips = -(-job["D"] // launch["config"]["BD"])
        tile = instructions_per_tile(_sass(ck.asm["cubin"], str(tools / "cuobjdump")), d_trips)
        q_blocks = -(-job["Q"] // launch["kwargs"]["BQ"])
        scale = ck.metadata.num_warps / launch["items"] * q_blocks
        res.update(sass=tile, per_item_steady=round(tile["steady"] * scale))
        if job["kernel"] == "topk":
            kw = launch["kwargs"]
            tiles = -(-N_ITEMS // launch["items"] // kw["SPLITS"])
            passes = insertion_passes(tiles, launch["items"], kw["BQ"], kw["KP"])
            res.update(insertion_passes_per_tile=round(passes, 3),
                       per_item_expected=round((tile["steady"] + passes * tile["insert_pass"]) * scale))
        else:
            res["per_item_expected"] = res["per_item_steady"]
    return res


def faults(r: dict) -> list[str]:
    """What the gate refuses in one compiled (kept) config."""
    if not r["kept"]:
        return []
    j = r["job"]
    tag = f"{j['kernel']} {j['dtype']} K={j['K']} D={j['D']} Q={j['Q']} {j['mode']} sm_{r['arch']} {r['config']}"
    if r["status"] != "ok":
        return [f"{tag}: compile failed: {r['error'][-300:]}"]
    out = []
    if r["shared_bytes"] > SMEM_LIMIT[r["arch"]]:
        out.append(f"{tag}: {r['shared_bytes']} B of shared memory, over the {SMEM_LIMIT[r['arch']]} B limit")
    if j["dtype"] in ("fp16", "bf16", "int8") and j["K"] == 5 and r["spill_store_bytes"]:
        out.append(f"{tag}: spills {r['spill_store_bytes']} B")
    if (j["kernel"], j["dtype"], j["K"], j["Q"], j["filtered"], r["arch"]) == ("topk", "fp16", 5, 64, False, 90) \
            and r.get("per_item_expected", 0) > MAX_PER_ITEM_Q64:
        out.append(f"{tag}: {r['per_item_expected']} warp-instructions per item, over {MAX_PER_ITEM_Q64}")
    return out


def choose_configs(results: list[dict]) -> dict[str, list[int]]:
    """The config table (kernels/search_configs.json): per key, among the configs that compiled
    without spilling, the one of fewest expected warp-instructions per item."""
    best = {}
    for r in results:
        if r.get("key") and r["status"] == "ok" and not r["spill_store_bytes"] and r.get("per_item_expected"):
            if r["key"] not in best or r["per_item_expected"] < best[r["key"]]["per_item_expected"]:
                best[r["key"]] = r
    return {key: [r["config"][k] for k in ("BN", "BD", "num_warps", "num_stages")] for key, r in sorted(best.items())}


def best_per_shape(results: list[dict]) -> list[dict]:
    """Per shape and architecture, the range over kept configs and the best one (fewest
    expected instructions per item): what the README's table shows."""
    groups = collections.defaultdict(list)
    for r in results:
        if r["kept"] and r["status"] == "ok":
            groups[(r["arch"], json.dumps(r["job"], sort_keys=True))].append(r)
    rows = []
    for (arch, job), rs in sorted(groups.items()):
        best = min(rs, key=lambda r: r.get("per_item_expected") or 0)
        rows.append(dict(arch=arch, job=json.loads(job), kept=len(rs), best=best["config"],
                         regs=[min(r["regs"] for r in rs), max(r["regs"] for r in rs)],
                         spill_bytes=max(r["spill_store_bytes"] for r in rs),
                         smem_kb=[round(min(r["shared_bytes"] for r in rs) / 1024),
                                  round(max(r["shared_bytes"] for r in rs) / 1024)],
                         mma=sorted({r["mma"] for r in rs}), per_item_expected=best.get("per_item_expected"),
                         per_item_steady=best.get("per_item_steady"), bytes_per_item=bytes_per_item(best["job"])))
    return rows


def _child(args) -> dict:
    job, index, arch, timeout = args
    cmd = [sys.executable, __file__, "--child", json.dumps([job, index, arch])]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return dict(job=job, arch=arch, config={"index": index}, kept=True, status="FAILED",
                    error=f"compile exceeded {timeout} s")
    for line in p.stdout.splitlines()[::-1]:
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return dict(job=job, arch=arch, config={"index": index}, kept=True, status="FAILED",
                error=(p.stderr or p.stdout)[-2000:])


def main(argv=None) -> int:
    # here, not at the top: tests/kernels/test_compile_gate.py loads this file by path, benchmarks/ not on sys.path
    from common import RESULTS, write_json
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", default="full", choices=["ci", "table", "int8", "full"])
    ap.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), help="only the set's shapes of these dtypes "
                    "(with --table: only their keys are replaced, the table's others kept)")
    ap.add_argument("--arch", type=int, nargs="+", default=[90, 80], choices=sorted(SMEM_LIMIT))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--all-configs", action="store_true", help="also compile the fitting configs the launcher does not use")
    ap.add_argument("--table", type=Path, help="compile every fitting config and write the config table chosen "
                    "from them here (kernels/search_configs.json); the gate then checks the table's choices")
    ap.add_argument("--out", type=Path, default=RESULTS / "kernels_sm90.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if a.child:
        print("RESULT " + json.dumps(compile_one(*json.loads(a.child)), default=str), flush=True)
        return 0
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    work = []
    for arch in a.arch:
        for job in shapes(a.set, arch):
            if a.dtype and job["dtype"] not in a.dtype:
                continue
            for i, launch in enumerate(launches(job, arch)):
                if launch["kept"] or a.all_configs or a.table:
                    work.append((job, i, arch, a.timeout))
    print(f"{len(work)} compiles, {a.jobs} at a time", flush=True)
    results, t0 = [], time.time()
    with cf.ThreadPoolExecutor(a.jobs) as pool:
        for r in pool.map(_child, work):
            results.append(r)
            j = r["job"]
            print(f"[{len(results)}/{len(work)} {time.time() - t0:4.0f}s] sm_{r['arch']} {j['kernel']:<6} "
                  f"{j['dtype']} K={j['K']} D={j['D']:<3} Q={j['Q']:<3} {j['mode'][:3]}{j['alpha']:.0f}"
                  f"{'+m' if j['margin'] else ''}{'+f' if j['filtered'] else ''} k={j['k']:<2} {r['config']} {r['status']} "
                  f"regs={r.get('regs')} spill={r.get('spill_store_bytes')} smem={r.get('shared_bytes')} "
                  f"mma={r.get('mma')} per_item={r.get('per_item_steady')}/{r.get('per_item_expected')}", flush=True)
    if a.table:
        table = choose_configs(results)
        for r in results:
            if r.get("key"):
                r["kept"] = [r["config"][k] for k in ("BN", "BD", "num_warps", "num_stages")] == table.get(r["key"])
        command = "benchmarks/kernels_aot.py " + " ".join(argv if argv is not None else sys.argv[1:])
        if a.dtype and a.table.exists():  # a partial run: the other dtypes' keys stay as chosen before
            old = json.loads(a.table.read_text())
            dtypes = {DTYPES[d] for d in a.dtype}
            table = dict(sorted({**{k: v for k, v in old["configs"].items() if k.split("/")[2] not in dtypes},
                                 **table}.items()))
            command = f"{old['generated_by']}; {command}"
        a.table.write_text(json.dumps({"triton": triton.__version__, "generated_by": command,
                                       "configs": table}, indent=1) + "\n")
        print(f"{len(table)} keys -> {a.table}")
    found = [f for r in results for f in faults(r)]
    write_json(a.out, {"benchmark": "kernels_aot", "triton": triton.__version__, "set": a.set, "archs": a.arch, "smem_limit": SMEM_LIMIT,
                       "faults": found, "best": best_per_shape(results), "results": results}, indent=1)
    print("\n".join(found) or "gate: no faults", f"-> {a.out}", sep="\n")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
