"""Every runnable benchmark starts and parses its command line when run as a script (`python benchmarks/X.py`),
so that its imports of the library modules beside it (common.py, tiny_runs.py, gpu_*.py) resolve."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if '__name__ == "__main__"' in p.read_text())


def test_the_scripts_are_found():
    assert {"gpu_check.py", "bench_methods.py", "run_all.py"} <= set(SCRIPTS)
    assert "common.py" not in SCRIPTS


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script, tmp_path):
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)  # not the repository root: the script must find its modules
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr[-2000:]
