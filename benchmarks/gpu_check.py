"""One command on a GPU: the compiled search kernels checked and timed, the encoders and a training step timed.

    make gpu-check                                      # H100/H200: at most 5 minutes
    .venv/bin/python benchmarks/gpu_check.py --smoke --out /tmp/gpu_check.json   # the same logic on CPU (CI)
    python3 benchmarks/gpu_check.py --only correctness,scale                   # a subset

Sections (each a child process of its own, so that a device fault or a hang in one cannot take the
others down, and each with a time budget; the JSON is rewritten after every section, and a child
saves its own partial results as it goes, so a run cut short keeps what it measured):
  correctness  kernels.search / set_scores against set_similarity_reference in float64 at awkward sizes
               (Q, N off every block, Kq != Kg, D = 40), fp16/bf16/fp32, chamfer/maxsim, margin, alpha
               16/64, k in {1, 10, 64, 100}, empty gallery, k > N, tied duplicates, non-unit rows, a filter,
               a gallery grown by one item (nothing compiled for it), 8-bit sets with their row scales,
               tensors on cuda:1 where there are two GPUs; and the gradient of set_scores_with_grad against autograd of the reference. Its plan
               (cases, kernel variants to compile, budget) is printed first; every launch takes its config
               from kernels/search_configs.json (recorded), nothing is autotuned
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
Exit status 0 only when every section finished and every check passed. The sections themselves are in
gpu_cases.py (1-2) and gpu_timings.py (3-5), what they share in gpu_runtime.py.
"""
from __future__ import annotations

import argparse
import collections
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SECTIONS = ("correctness", "scale", "timings", "encoders", "train_step")
# Soft budgets (s) on an H100/H200: a child stops starting work past its own; the parent kills it GRACE_S later.
# They include each child's start-up; their sum stays inside DEADLINE_S, and that inside the 5 minutes asked for.
BUDGET_S = {"correctness": 100, "scale": 55, "timings": 75, "encoders": 20, "train_step": 30}
SMOKE_BUDGET_S = 120  # per section on 2 CPU cores: never reached at the smoke sizes (CI asserts nothing is skipped)
GRACE_S, RESERVE_S, DEADLINE_S = 15, 15, 290  # RESERVE_S: kept back for each section still to run
# correctness runs as this many processes side by side: its time goes to Triton compiling many specialisations,
# one CPU core per process (the GPU machines have 16); 2 under --smoke, so that CI runs the merge too
CORRECTNESS_SHARDS = 4
COMPILE_S = 2.0  # one search variant compiled for sm_90 (benchmarks/kernels_aot.py, compile_s: 1.5-2.5 s on 2 cores)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, Triton interpreter (needs --out)")
    ap.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/gpu_<device>.json); plot beside it")
    ap.add_argument("--plan", action="store_true", help="print the correctness section's plan (JSON) and exit")
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

from common import RESULTS, grouped_bars, machine_record, pyplot, save_plot, write_json  # noqa: E402
from gpu_cases import merge_shards, plan, section_correctness, section_scale  # noqa: E402
from gpu_runtime import KSET, RUN, TOPK, Budget, Record, configure, error_text, log  # noqa: E402
from gpu_timings import section_encoders, section_timings, section_train_step  # noqa: E402

configure(ARGS.smoke, T0)
SECTION_FNS = {"correctness": lambda rec, budget: section_correctness(rec, budget, ARGS.shard),
               "scale": section_scale, "timings": section_timings, "encoders": section_encoders,
               "train_step": section_train_step}


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
    env = {**machine_record("torch", "python"), "smoke": RUN.smoke, **machine_record("started_utc")}
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
    env["torch_cuda"] = torch.version.cuda
    from kernels import search_configs  # the configs every launch of this run takes (config_for)
    env["config_table"] = json.loads(search_configs.CONFIG_TABLE.read_text())
    if RUN.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, capability=list(torch.cuda.get_device_capability(0)),
                   sm_count=props.multi_processor_count, memory_GB=round(props.total_memory / 1e9, 1),
                   gpus=torch.cuda.device_count(), cuda=torch.version.cuda)
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
        self.proc = subprocess.Popen(cmd + (["--smoke"] if RUN.smoke else []), stdout=subprocess.PIPE,
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
    n = 2 if RUN.smoke else CORRECTNESS_SHARDS
    children = []
    try:
        children = [Child(name, budget_s, hard_s, part(i), shard=f"{i}/{n}") for i in range(n)]
        return merge_shards([c.finish() for c in children])
    finally:
        for c in children:
            c.kill()


def plot(report: dict, path: Path) -> None:
    sections = report["sections"]
    fig, (ax1, ax2) = pyplot().subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [2, 1]})
    rows = sections.get("timings", {}).get("rows", [])
    series = ["kernels.search", "torch eager (blocked)", "torch.compile (blocked)", "copy floor"]
    if rows:
        ms = {name: [r.get("floor_ms") if name == "copy floor" else r["methods"].get(name, {}).get("ms") for r in rows]
              for name in series}
        grouped_bars(ax1, [f"N={r['N']:,}\nQ={r['Q']}" for r in rows],
                     {name: [v if isinstance(v, float) else float("nan") for v in vals] for name, vals in ms.items()},
                     tick_fontsize=8)
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
    save_plot(fig, path.with_suffix(""), dpi=110)


def correctness_plan() -> dict:
    p = plan(2 if RUN.smoke else CORRECTNESS_SHARDS)
    return dict(p, compile_s=max(p["variants_per_shard"]) * COMPILE_S, budget_s=BUDGET_S["correctness"])


def run_parent() -> int:
    if ARGS.plan:  # sizes of the GPU run (of --smoke with it); needs no device
        print(json.dumps(correctness_plan()))
        return 0
    if RUN.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here: run it on an H100/H200, or --smoke --out PATH for the CPU logic check",
              file=sys.stderr)
        return 2
    env = environment()
    out = ARGS.out or RESULTS / f"gpu_{env['device_slug']}.json"
    report = {"benchmark": "gpu_check", "environment": env, "sections": {}}
    t_end = T0 + ARGS.deadline
    log(f"gpu_check on {env['device']} (torch {env['torch']}, triton {env['triton']}, CUDA {env['torch_cuda']}, "
        f"config table of triton {env['config_table'].get('triton')}): writing {out}")
    if "correctness" in ARGS.sections:
        report["plan"] = p = correctness_plan()
        log(f"plan: {', '.join(ARGS.sections)} in {ARGS.deadline:.0f} s; correctness: {p['cases']} cases and "
            f"{p['grad_cases']} gradient cases in {p['shards']} processes, {p['search_variants']} search kernel variants "
            f"(one config each) compiled, at most {max(p['variants_per_shard'])} by one process (~{p['compile_s']:.0f} s "
            f"of compiling at {COMPILE_S} s each), budget {p['budget_s']} s")
    for i, name in enumerate(ARGS.sections):
        soft = SMOKE_BUDGET_S if RUN.smoke else BUDGET_S[name]
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
        write_json(out, report, indent=1)
        log(f"{name}: {sec['status']}, {'ok' if sec.get('ok') else 'NOT ok'} ({sec.get('wall_s')} s)"
            + (f" -- {sec['error'][:300]}" if sec.get("error") else ""))
    try:
        plot(report, out.with_suffix(".png"))
        report["plot"] = out.with_suffix(".png").name
    except Exception as e:  # noqa: BLE001 - the JSON matters more than the picture
        report["plot_error"] = error_text(e)
    report["wall_s"] = round(time.time() - T0, 1)
    write_json(out, report, indent=1)
    log(f"done in {report['wall_s']} s: {'every check passed' if report['ok'] else 'NOT all ok'}; {out}")
    return 0 if report["ok"] else 1


def main() -> int:
    if ARGS.section:
        return run_child()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `timeout` still runs the children's kill
    return run_parent()


if __name__ == "__main__":
    sys.exit(main())
