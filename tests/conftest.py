"""Shared fixtures: a small synthetic dataset and a tiny trained checkpoint, built once per session;
and the command line run as a user runs it."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.recipes import recipe

TEST_RECIPE = recipe("test")
REPO = Path(__file__).resolve().parents[1]


def run_command(module: str, *args, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS...` in a real process (`serving.cli` is `tbps`); with `check`, it must succeed."""
    done = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=600)
    if check:
        assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    from trainer.data.synthetic import write_synthetic
    return write_synthetic(tmp_path_factory.mktemp("synth") / "data", ids=12, seed=3,
                           image_size=(64, 24), progress=False)


@pytest.fixture(scope="session")
def tiny_run(synthetic_data, tmp_path_factory):
    """A finished 2-epoch training run directory."""
    from trainer.fit import TrainConfig, train
    out = tmp_path_factory.mktemp("run") / "run"
    train(TrainConfig(data=str(synthetic_data), out=str(out), epochs=2, **TEST_RECIPE))
    return out
