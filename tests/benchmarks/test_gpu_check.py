"""benchmarks/gpu_check.py without a GPU: --smoke runs every section's logic on CPU at tiny sizes (the Triton
kernels through the interpreter) and must pass every check; a section past its hard limit is recorded, not lost."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
SECTIONS = {"correctness", "scale", "timings", "encoders", "train_step"}


def run(*args, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPT), "--smoke", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_smoke_runs_every_section_and_every_check_passes(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = run("--out", str(out))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["environment"]["smoke"]
    assert set(report["sections"]) == SECTIONS
    for name, section in report["sections"].items():
        assert section["status"] == "done" and section["error"] is None and section["ok"], (name, section)

    correctness = report["sections"]["correctness"]
    assert not correctness["skipped"] and correctness["passed"] == correctness["total"] > 25
    cases, grads = correctness["cases"], correctness["grad"]
    assert all(c["ok"] and "error" not in c for c in cases + grads)
    checked = [c for c in cases if "skipped" not in c]  # bf16: the interpreter cannot run it
    assert all(c["dense"]["ok"] and c["search"] for c in checked)
    assert {"ties", "nonunit", "grown"} <= {c["kind"] for c in checked} and any(c.get("filtered") for c in checked)
    assert report["plan"]["cases"] == len(cases) and report["plan"]["search_variants"] > 0
    assert report["environment"]["config_table"]["configs"]  # the table every launch took its config from
    assert {"chamfer", "maxsim"} <= {c["mode"] for c in checked}
    assert {"fp16", "fp32"} <= {c["dtype"] for c in checked}
    assert any(c["N"] == 0 for c in checked) and any(max(c["ks"]) > 64 for c in checked)
    assert any(int(k) > c["N"] for c in checked for k in c["search"])  # k > N
    ties = next(c for c in checked if c["kind"] == "ties")
    assert all(r["ties"]["ok"] for r in ties["search"].values())
    assert {g["mode"] for g in grads} == {"chamfer", "maxsim"}
    assert all(max(g["grad_rel_err"].values()) <= 1e-2 for g in grads)

    scale = report["sections"]["scale"]
    assert set(scale["checks"]) == {"search_k10", "search_k100", "set_scores"}
    assert scale["checks"]["search_k10"]["rank1"] == scale["planted"]
    assert scale["checks"]["search_k100"]["rank1_is_planted"] and scale["checks"]["set_scores"]["argmax_is_planted"]
    assert any(i > scale["int32_edge_item"] for i in scale["planted"])

    rows = report["sections"]["timings"]["rows"]
    assert {(r["N"], r["Q"]) for r in rows} == {(64, 1), (64, 4), (128, 1), (128, 4)}
    for r in rows:
        assert r["floor_ms"] > 0
        for method in ("kernels.search", "torch eager (blocked)", "torch.compile (blocked)"):
            m = r["methods"][method]
            assert m["ms"] > 0 and m["GB_per_s"] > 0 and m["TFLOP_per_s"] > 0 and m["over_floor"] > 0, (r, method)

    encoders = report["sections"]["encoders"]["rows"]
    assert {(r["encoder"], r["batch"]) for r in encoders} == {("image", 1), ("image", 2), ("text", 1), ("text", 2)}
    assert all(r["ms"] > 0 and r["out_shape"][0] == r["batch"] for r in encoders)
    train = report["sections"]["train_step"]
    assert train["ms_per_step"] > 0 and {"sdm", "asm", "id"} <= set(train["losses"])

    assert out.with_suffix(".png").stat().st_size > 10_000
    assert not list(tmp_path.glob("*.part.json"))  # each section's working file is folded into the report


def test_a_section_past_its_hard_limit_is_recorded_and_the_run_fails(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = run("--out", str(out), "--only", "encoders", "--deadline", "0", timeout=60)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    encoders = report["sections"]["encoders"]
    assert not report["ok"] and encoders["status"] == "timeout" and "killed after" in encoders["error"]


def test_the_gpu_runs_plan_fits_its_budget():
    """At 8b2c390 the autotuner compiled up to five configs a key: two correctness processes needed 132
    and 140 compiles (1.1-2.4 s each) in a 100 s budget. Now one config a variant, and the cases go to
    the processes so that shared variants compile once: the busiest compiles for at most half the budget."""
    done = subprocess.run([sys.executable, str(SCRIPT), "--plan"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    p = json.loads(done.stdout.strip().splitlines()[-1])
    assert p["cases"] > 25 and sum(p["variants_per_shard"]) >= p["search_variants"] > 0
    assert p["compile_s"] <= p["budget_s"] / 2, p


def test_smoke_refuses_to_run_without_out():
    done = run(timeout=60)
    assert done.returncode == 2 and "--smoke needs --out" in done.stderr
