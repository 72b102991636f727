"""`benchmarks/run_all.py --quick` (the README's benchmark command) runs every benchmark and
each writes its JSON and plot, into the folder given by --results (here the test's own, so that
a run never touches benchmarks/results/). Timings are not asserted: these machines are shared."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_run_all_quick_writes_every_result(tmp_path):
    results = tmp_path / "results"  # not there yet: the scripts make it
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick",
                           "--results", str(results)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stem in ("encoders_cpu_quick", "search_cpu_quick", "serving_cpu_quick"):
        data = json.loads((results / f"{stem}.json").read_text())
        rows = data.get("rows") or data.get("results")
        assert rows, stem
        assert (results / f"{stem}.png").stat().st_size > 10_000, stem
    serving = json.loads((results / "serving_cpu_quick.json").read_text())["rows"]
    assert all(r["failures"] == 0 and r["queries"] > 0 for r in serving)
    assert {r["setup"] for r in serving} == {"batching on", "batching off", "2 shards", "2 local shards", "secured"}
