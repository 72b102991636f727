"""Shared fixtures: a small synthetic dataset and a tiny trained checkpoint, built once per session."""
import pytest

# A few epochs of `tiny` on a dozen synthetic people: enough to exercise every code path.
TEST_RECIPE = dict(config="tiny", method="baseline", batch_size=8, num_instances=2, lr=5e-4,
                   new_lr_factor=1.0, warmup_epochs=0.5, bpe_vocab=600, workers=0,
                   progress=False, log_every=1)


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
