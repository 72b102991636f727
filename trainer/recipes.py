"""Named training recipes: the one place every command, benchmark and test takes them from.

`tiny`: the embedded default (trainer/configs/tiny.json) trained from scratch on 2 CPU cores,
with a larger learning rate and shorter warm-up than the IRRA recipe, which is meant for
fine-tuning pretrained CLIP. About 6.5 minutes on the default 500 people
(benchmarks/bench_train_tiny.py measures it). `test`: a few epochs of `tiny` on a dozen
people, enough to exercise every code path in seconds.
"""
from __future__ import annotations

DEMO_IDS = 500  # the default synthetic dataset: 350 training, 50 validation, 100 test people

RECIPES: dict[str, dict] = {
    "tiny": dict(config="tiny", method="esa", epochs=30, batch_size=64, num_instances=4,
                 lr=1e-3, new_lr_factor=1.0, warmup_epochs=2.0, bpe_vocab=1024, workers=1,
                 log_every=20),
    "test": dict(config="tiny", method="baseline", batch_size=8, num_instances=2, lr=5e-4,
                 new_lr_factor=1.0, warmup_epochs=0.5, bpe_vocab=600, workers=0,
                 progress=False, log_every=1),
}


def recipe(name: str, **overrides) -> dict:
    """TrainConfig keyword arguments of a named recipe, updated by `overrides`."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(RECIPES)}")
    return dict(RECIPES[name], **overrides)
