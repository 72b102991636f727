"""Shared fixtures: a small synthetic dataset and a tiny trained checkpoint, built once per session."""
import pytest

from trainer.recipes import RECIPES

TEST_RECIPE = RECIPES["test"]


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
