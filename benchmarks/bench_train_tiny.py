"""Does `tiny` learn? Train it on the default synthetic data on CPU, then compare its
text-to-image retrieval on held-out people with chance and with a trivial colour baseline.

    .venv/bin/python benchmarks/bench_train_tiny.py [--ids 500] [--threads 2] [--out DIR]

Writes benchmarks/results/train_tiny_cpu.json and .png.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from common import grouped_bars, machine_record, pyplot, result_stem, save_plot, write_result
from tiny_runs import synthetic_data
from trainer.checkpoint import load_checkpoint
from trainer.data.synthetic.colour_baseline import colour_histogram_scores
from trainer.evaluate import encode_split, rank_metrics, split_metrics
from trainer.fit import TrainConfig, train
from trainer.recipes import DEMO_IDS, recipe


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
    test = synthetic_data(work / "data", args.ids).test

    t0 = time.time()
    best = train(TrainConfig(data=str(work / "data"), out=str(work / "run"), **recipe("tiny")))
    train_seconds = time.time() - t0

    ckpt = load_checkpoint(best)
    text, text_pids, image, image_pids = encode_split(ckpt.model, ckpt.tokenizer, test)
    model = split_metrics(text, text_pids, image, image_pids, ckpt.model.score)["t2i"]
    captions = [c for e in test for c in e.captions]
    colour = rank_metrics(colour_histogram_scores(captions, [e.path for e in test]), text_pids, image_pids)
    rows = {"tiny (trained)": model, "colour histogram": colour, "chance": chance(text_pids, image_pids)}

    result = {
        "benchmark": "train_tiny_cpu", **machine_record("machine", "cpu", "threads", "torch"),
        "recipe": recipe("tiny"),
        "dataset": {"ids": args.ids, "test_ids": len(set(image_pids)), "test_images": len(image_pids),
                    "test_captions": len(text_pids)},
        "train_seconds": round(train_seconds, 1), "best_epoch": ckpt.config["meta"]["epoch"],
        "t2i": rows,
    }
    stem = result_stem("train_tiny_cpu")
    write_result(stem, result)
    print(f"trained in {train_seconds:.0f} s on {args.threads} threads; test split: "
          f"{len(text_pids)} captions x {len(image_pids)} images of {len(set(image_pids))} unseen people")
    print(f"{'text-to-image':18s}" + "".join(f"{k:>8s}" for k in model))
    for name, m in rows.items():
        print(f"{name:18s}" + "".join(f"{v:8.2f}" for v in m.values()))
    plot(rows, stem)


def plot(rows: dict, stem: Path) -> None:
    keys = list(next(iter(rows.values())))
    fig, ax = pyplot().subplots(figsize=(7, 3.5))
    grouped_bars(ax, keys, {name: [m[k] for k in keys] for name, m in rows.items()}, width=0.27)
    ax.set_ylabel("percent")
    ax.set_title("tiny on synthetic data: text-to-image retrieval of unseen people")
    ax.legend()
    save_plot(fig, stem)


if __name__ == "__main__":
    main()
