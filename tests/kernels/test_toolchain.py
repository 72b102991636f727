"""kernels.toolchain: the docker build's check that Triton can build its kernel launcher (a C compiler
and Python's headers), run as the image runs it: python3 -m kernels.toolchain."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("triton", reason="triton is not installed")


def run(tmp_path, **env):
    # a fresh cache: a launcher built before must not hide a missing compiler
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "cache"), **env)
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-m", "kernels.toolchain"], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)


def test_the_launcher_builds_on_this_machine(tmp_path):
    done = run(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "the kernel launcher builds here" in done.stdout


def test_a_machine_without_a_c_compiler_is_refused_with_what_is_missing(tmp_path):
    done = run(tmp_path, CC=str(tmp_path / "no-such-cc"))
    assert done.returncode == 1
    assert "cannot build its kernel launcher" in done.stderr and "C compiler" in done.stderr
    assert "Traceback" not in done.stderr
