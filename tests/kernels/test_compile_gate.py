"""The compile gate: the search and gradient kernels compiled ahead of time for sm_90 and sm_80
on this CPU machine (no GPU, no driver), every config the autotuner can keep for the headline
shapes (benchmarks/kernels_aot.py --set ci; the full sweep is the benchmark)."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("triton", reason="triton is not installed")


def aot():
    spec = importlib.util.spec_from_file_location("kernels_aot", ROOT / "benchmarks" / "kernels_aot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_kept_configs_compile_fit_and_do_not_spill(tmp_path):
    out = tmp_path / "aot.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernels_aot.py"), "--set", "ci",
                           "--arch", "90", "80", "--out", str(out)], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["faults"] == []
    results = report["results"]
    module = aot()
    for arch in (90, 80):  # every shape of the set compiled, in at least one config
        assert {json.dumps(s, sort_keys=True) for s in module.shapes("ci", arch)} == \
            {json.dumps(r["job"], sort_keys=True) for r in results if r["arch"] == arch}
    assert all(r["status"] == "ok" and r["kept"] for r in results)
    # Q = 1 is bound by HBM on H100/H200 only below ~450 warp-instructions an item (fp16, K = 5, D = 512)
    headline = [r for r in results if r["arch"] == 90 and r["job"] == module.shape("topk", Q=1)]
    assert min(r["per_item_expected"] for r in headline) <= 450
    assert {r["mma"] for r in headline} == {"wgmma"}


def test_the_gate_refuses_what_cannot_launch_or_spills():
    module = aot()
    job = module.shape("topk", Q=64)
    ok = dict(job=job, arch=90, config={"BN": 64}, kept=True, status="ok", shared_bytes=65536, spill_store_bytes=0)
    assert module.faults(ok) == []
    assert "over the" in module.faults(dict(ok, shared_bytes=300 * 1024))[0]
    assert "over the" in module.faults(dict(ok, arch=80, shared_bytes=200 * 1024))[0]  # fine on sm_90, not sm_80
    assert "spills" in module.faults(dict(ok, spill_store_bytes=8))[0]
    assert module.faults(dict(ok, spill_store_bytes=8, job=dict(job, dtype="fp32"))) == []  # fp32: reported only
    assert "compile failed" in module.faults(dict(ok, status="FAILED", error="ptxas died"))[0]
    assert module.faults(dict(ok, kept=False, shared_bytes=300 * 1024)) == []  # pruned: never launched


def test_instruction_count_follows_loops_and_trip_counts():
    """A synthetic SASS listing: tile loop 0x00-0x90 holding a D loop (0x20-0x40, 3 instructions,
    run d_trips times) and an insertion loop without loads (0x60-0x70)."""
    module = aot()
    insns = [(0x00, "IMAD", "IMAD R1"), (0x10, "ISETP", "ISETP P0"),
             (0x20, "LDGSTS", "LDGSTS [R2]"), (0x30, "HGMMA", "HGMMA R4"), (0x40, "BRA", "@P0 BRA 0x20"),
             (0x50, "FADD", "FADD R5"),
             (0x60, "SHFL", "SHFL R6"), (0x70, "BRA", "@P1 BRA 0x60"),
             (0x80, "FMUL", "FMUL R7"), (0x90, "BRA", "@P2 BRA 0x0"), (0xa0, "EXIT", "EXIT")]
    tile = module.instructions_per_tile(insns, d_trips=4)
    assert tile["tile_loop"] and tile["d_loops"] == 1
    assert tile["steady"] == 5 + 3 * 4  # body outside inner loops, plus the D loop 4 times
    assert tile["insert_pass"] == 2
