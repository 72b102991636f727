"""The compile gate: the search and gradient kernels compiled ahead of time for sm_90 and sm_80
on this CPU machine (no GPU, no driver), the config each launch takes (kernels/search_configs.json)
for the headline shapes (benchmarks/kernels_aot.py --set ci; the full sweep is the benchmark), under
the Triton the Dockerfile deploys."""
import importlib.util
import itertools
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
    assert "spills" in module.faults(dict(ok, spill_store_bytes=8, job=dict(job, dtype="int8")))[0]  # 8-bit: gated
    assert "compile failed" in module.faults(dict(ok, status="FAILED", error="ptxas died"))[0]
    assert module.faults(dict(ok, kept=False, shared_bytes=300 * 1024)) == []  # not the launcher's: never launched
    assert "warp-instructions per item" in module.faults(dict(ok, per_item_expected=4100))[0]  # Q = 64 over 4,000
    assert module.faults(dict(ok, per_item_expected=4100, arch=80)) == []


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


def test_the_gate_compiles_with_the_triton_that_is_deployed():
    """At 8b2c390 CI compiled with Triton 3.9 while the image got 3.5.1 (torch 2.9.1's pin), where other
    configs spill and Q = 1 runs mma.sync: one version, pinned in [gpu], [dev] and the Dockerfile, the
    one the config table was chosen under and the one this gate runs."""
    import importlib.metadata
    import re
    import tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = {extra: [r.split("==")[1] for r in extras[extra] if r.startswith("triton==")] for extra in ("gpu", "dev")}
    (docker,) = re.findall(r"^ARG TRITON_VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    table = json.loads((ROOT / "kernels" / "search_configs.json").read_text())["triton"]
    assert pins == {"gpu": [docker], "dev": [docker]} and table == docker
    assert importlib.metadata.version("triton") == docker


def test_the_config_table_holds_launchable_configs_for_every_served_key():
    """kernels/search_configs.json (kernels_aot.py --set table --table ...): one config per key, each one
    the launcher can run (in CONFIGS, within the architecture's shared memory and accumulator budget),
    for every launch of the served model (fp16 or 8-bit sets, K = 5, D = 512: each batch's query columns,
    top-k filtered or not and the dense path) on sm_90 and sm_80; nothing is autotuned at run time."""
    import torch
    from kernels import search_configs, search_triton
    module = aot()
    table = search_configs.config_table()
    assert table
    for key, config in table.items():
        arch, kind, dtype, cols, _, _, _ = key.split("/")
        elsize = 4 if dtype == "float32" else 2
        assert tuple(config) in search_configs.CONFIGS, key
        assert search_configs.fits(tuple(config), int(cols[1:]), elsize, module.SMEM_LIMIT[int(arch[3:])]), key
    for arch, dtype in itertools.product((90, 80), (torch.float16, torch.int8)):
        for nq in (1, 2, 4, 8, 64):
            meta = search_triton.launch_meta(nq, 5, 5, 512, dtype, 16.0, "chamfer")
            for kind, filtered in (("topk", False), ("topk", True), ("dense", False)):
                key = search_configs.config_key(arch, kind, dtype, meta, 512, filtered)
                assert key in table, key
                assert search_configs.config_for(arch, kind, dtype, meta, 512, filtered,
                                                module.SMEM_LIMIT[arch]) == tuple(table[key])
