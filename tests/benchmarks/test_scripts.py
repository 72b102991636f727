"""Every runnable benchmark starts and parses its command line when run as a script (`python benchmarks/X.py`),
so that its imports of the library modules beside it (common.py, tiny_runs.py, gpu_*.py) resolve."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if '__name__ == "__main__"' in p.read_text())
# One process runs each script as Python runs a script (its folder first on sys.path, run as
# __main__, from another folder) with --help: torch is imported once, not once per script.
DRIVER = """
import contextlib, io, json, os, runpy, sys
for path in sys.argv[1:]:
    sys.argv, sys.path[0], out, code = [path, "--help"], os.path.dirname(path), io.StringIO(), None
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(path, run_name="__main__")
    except SystemExit as e:
        code = e.code
    print(json.dumps({"script": os.path.basename(path), "code": code, "usage": "usage:" in out.getvalue()}))
"""


def test_the_scripts_are_found():
    assert {"gpu_check.py", "bench_methods.py", "run_all.py"} <= set(SCRIPTS)
    assert "common.py" not in SCRIPTS


@pytest.mark.slow
def test_every_script_parses_its_help(tmp_path):
    done = subprocess.run([sys.executable, "-c", DRIVER, *(str(BENCHMARKS / s) for s in SCRIPTS)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)  # not the repository root
    assert done.returncode == 0, done.stderr[-2000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"script"')]
    assert [r["script"] for r in results] == SCRIPTS, done.stderr[-2000:]
    assert [r for r in results if r["code"] not in (0, None) or not r["usage"]] == []
