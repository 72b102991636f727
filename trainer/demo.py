"""The main job on the embedded default: synthetic data, the `tiny` model, CPU.

Stages: synthesize -> train -> evaluate on held-out identities -> show a few queries.
Each stage reuses what an earlier run built in the work directory unless `fresh`.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

# Training `tiny` from scratch on 2 CPU cores: a larger learning rate and shorter warm-up
# than the IRRA recipe, which is meant for fine-tuning pretrained CLIP. About 6.5 minutes
# on 500 people (benchmarks/bench_train_tiny.py measures it).
TINY_RECIPE = dict(config="tiny", method="esa", epochs=30, batch_size=64, num_instances=4,
                   lr=1e-3, new_lr_factor=1.0, warmup_epochs=2.0, bpe_vocab=1024, workers=1,
                   log_every=20)
DEMO_IDS = 500  # the default synthetic dataset: 350 training, 50 validation, 100 test people


def _stage(name: str) -> None:
    print(f"\n== {name} ==", flush=True)


def run_demo(workdir: Path, fresh: bool = False, ids: int = DEMO_IDS,
             epochs: int = TINY_RECIPE["epochs"]) -> dict:
    from trainer.checkpoint import load_checkpoint
    from trainer.data.formats import load_dataset
    from trainer.data.synthetic import write_synthetic
    from trainer.evaluate import encode_split, split_metrics
    from trainer.fit import TrainConfig, train

    if fresh:
        shutil.rmtree(workdir, ignore_errors=True)
    data_dir, run_dir = workdir / "data", workdir / "run"
    t0 = time.time()

    _stage(f"1/3 synthesize {ids} people -> {data_dir}")
    if (data_dir / "reid_raw.json").is_file():
        print("reusing the existing dataset (--fresh rebuilds it)")
    else:
        write_synthetic(data_dir, ids=ids, seed=0)

    _stage(f"2/3 train tiny on CPU -> {run_dir}")
    best = train(TrainConfig(data=str(data_dir), out=str(run_dir), **dict(TINY_RECIPE, epochs=epochs)))

    _stage("3/3 evaluate on held-out identities (test split)")
    ckpt = load_checkpoint(best)
    test = load_dataset(data_dir).test
    text, text_pids, image, image_pids = encode_split(ckpt.model, ckpt.tokenizer, test)
    metrics = split_metrics(text, text_pids, image, image_pids, ckpt.model.score)
    for direction, m in metrics.items():
        print(f"  {direction}: " + "  ".join(f"{k} {v:6.2f}" for k, v in m.items()))
    captions = [c for e in test for c in e.captions]
    print("\nexample queries (top-5 gallery person ids, * = same person as the query):")
    for q in range(0, len(captions), max(1, len(captions) // 3))[:3]:
        top = ckpt.model.score(text[q:q + 1], image)[0].topk(5).indices.tolist()
        marks = " ".join(f"{image_pids[g]}{'*' if image_pids[g] == text_pids[q] else ''}" for g in top)
        print(f"  \"{captions[q]}\"\n    person {text_pids[q]} -> {marks}")
    print(f"\ndone in {time.time() - t0:.0f} s; checkpoint {best}")
    return metrics
