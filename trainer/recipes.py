"""Named training recipes: the one place every command, benchmark and test takes them from.

`tbps`: the TrainConfig defaults, IRRA's hyper-parameters (lr 1e-5, 60 epochs, batch 64, warm-up 5
epochs, ...) with tbps's own choices. `irra`: IRRA's recipe exactly (anosorae/IRRA: datasets/build.py,
solver/, processor/), every choice where tbps differs; docs/recipes.md lists them line by line
with why the default differs. Precision stays tbps's in both (fp32 weights under bf16 autocast).
`tiny`: the embedded default (trainer/configs/tiny.json) trained from scratch on 2 CPU cores,
with a larger learning rate and shorter warm-up than the fine-tuning recipes. About 6.5 minutes
on the default 500 people (benchmarks/bench_train_tiny.py measures it). `test`: a few epochs of
`tiny` on a dozen people, enough to exercise every code path in seconds.

Names join with "+", later ones winning: `tiny+irra` is tiny's scale with IRRA's choices.
"""
from __future__ import annotations

DEMO_IDS = 500  # the default synthetic dataset: 350 training, 50 validation, 100 test people

RECIPES: dict[str, dict] = {
    "tbps": {},
    "irra": dict(sampler="random", resize="bilinear", erase_max=0.4, erase_fill="mean", adam_eps=1e-3,
                 param_rule="irra", lr_per_epoch=True, grad_clip=0.0),
    "tiny": dict(config="tiny", method="esa", epochs=30, batch_size=64, num_instances=4,
                 lr=1e-3, new_lr_factor=1.0, warmup_epochs=2.0, bpe_vocab=1024, workers=1,
                 log_every=20),
    "test": dict(config="tiny", method="baseline", batch_size=8, num_instances=2, lr=5e-4,
                 new_lr_factor=1.0, warmup_epochs=0.5, bpe_vocab=600, workers=0,
                 progress=False, log_every=1),
}


def recipe(name: str, **overrides) -> dict:
    """TrainConfig keyword arguments of a named recipe ("a+b": b's values over a's), its name
    included, updated by `overrides`."""
    args = {}
    for part in name.split("+"):
        if part not in RECIPES:
            raise ValueError(f"unknown recipe {part!r}; available: {', '.join(RECIPES)} (joined with +)")
        args.update(RECIPES[part])
    return {**args, "recipe": name, **overrides}
