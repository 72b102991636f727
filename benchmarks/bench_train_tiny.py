"""Does `tiny` learn? Train it on the default synthetic data on CPU, then compare its
text-to-image retrieval on held-out people with chance and with a trivial colour baseline.

    .venv/bin/python benchmarks/bench_train_tiny.py [--ids 500] [--threads 2] [--out DIR]

Writes benchmarks/results/train_tiny_cpu.json and .png.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from trainer.checkpoint import load_checkpoint
from trainer.data.colour_baseline import colour_histogram_scores
from trainer.data.formats import load_dataset
from trainer.data.synthetic import write_synthetic
from trainer.recipes import DEMO_IDS, RECIPES
from trainer.evaluate import encode_split, rank_metrics, split_metrics
from trainer.fit import TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results"


def chance(query_pids, gallery_pids, trials: int = 20) -> dict:
    """Mean metrics of uniformly random rankings."""
    rng = np.random.default_rng(0)
    runs = [rank_metrics(rng.random((len(query_pids), len(gallery_pids))), query_pids, gallery_pids)
            for _ in range(trials)]
    return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ids", type=int, default=DEMO_IDS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/bench_train_tiny")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.out)
    data = work / "data"
    if not (data / "reid_raw.json").is_file():
        write_synthetic(data, ids=args.ids, seed=0)

    t0 = time.time()
    best = train(TrainConfig(data=str(data), out=str(work / "run"), **RECIPES["tiny"]))
    train_seconds = time.time() - t0

    ckpt = load_checkpoint(best)
    test = load_dataset(data).test
    text, text_pids, image, image_pids = encode_split(ckpt.model, ckpt.tokenizer, test)
    model = split_metrics(text, text_pids, image, image_pids, ckpt.model.score)["t2i"]
    captions = [c for e in test for c in e.captions]
    colour = rank_metrics(colour_histogram_scores(captions, [e.path for e in test]), text_pids, image_pids)
    rows = {"tiny (trained)": model, "colour histogram": colour, "chance": chance(text_pids, image_pids)}

    result = {
        "benchmark": "train_tiny_cpu", "machine": platform.node(), "cpu": platform.processor() or platform.machine(),
        "threads": args.threads, "torch": torch.__version__, "recipe": RECIPES["tiny"],
        "dataset": {"ids": args.ids, "test_ids": len(set(image_pids)), "test_images": len(image_pids),
                    "test_captions": len(text_pids)},
        "train_seconds": round(train_seconds, 1), "best_epoch": ckpt.config["meta"]["epoch"],
        "t2i": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_tiny_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"trained in {train_seconds:.0f} s on {args.threads} threads; test split: "
          f"{len(text_pids)} captions x {len(image_pids)} images of {len(set(image_pids))} unseen people")
    print(f"{'text-to-image':18s}" + "".join(f"{k:>8s}" for k in model))
    for name, m in rows.items():
        print(f"{name:18s}" + "".join(f"{v:8.2f}" for v in m.values()))
    plot(rows, RESULTS / "train_tiny_cpu.png")


def plot(rows: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = list(next(iter(rows.values())))
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, (name, m) in enumerate(rows.items()):
        ax.bar(x + (i - 1) * 0.27, [m[k] for k in keys], 0.27, label=name)
    ax.set_xticks(x, keys)
    ax.set_ylabel("percent")
    ax.set_title("tiny on synthetic data: text-to-image retrieval of unseen people")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
