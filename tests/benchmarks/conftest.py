"""benchmarks/ on sys.path, as it is for a script run from it: these tests import its library modules
(common, tiny_runs, gpu_*) by the names the scripts use."""
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))
