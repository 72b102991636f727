"""Baseline, ESA, SEN and SSAN at the same budget on the synthetic data, over seeds.

    .venv/bin/python benchmarks/bench_methods.py [--seeds 0 1 2] [--epochs 15]
        [--methods baseline esa sen ssan] [--out runs/bench_methods] [--results benchmarks/results]

Same data and recipe as benchmarks/bench_esa_vs_baseline.py (the demo's synthetic people, the
`tiny` recipe from scratch, same epochs, batch, learning rate and schedule for every method; finished
runs under --out are reused). SEN's decoder and SSAN's towers are scaled to the tiny CLIP
(`METHOD_ARGS` below; parameter counts go in the JSON). Evaluates text-to-image on the unseen test
people with each method's own score and writes RESULTS/methods.json and .png: R@1/5/10/mAP (and
mINP), mean and standard deviation over seeds. `--ids` shrinks the dataset for a quick check.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch

from bench_esa_vs_baseline import evaluate_run, training_seconds  # a sibling script: run this file as a script
from trainer.checkpoint import load_checkpoint
from trainer.data.formats import load_dataset
from trainer.data.synthetic import write_synthetic
from trainer.recipes import DEMO_IDS, RECIPES
from trainer.fit import TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("R1", "R5", "R10", "mAP")
# Sized to the tiny CLIP (width 128, 64x32 images); other hyper-parameters are the methods' defaults.
METHOD_ARGS = {
    "baseline": {},
    "esa": {},
    "sen": {"decoder_width": 128, "decoder_layers": 4, "decoder_heads": 4},
    "ssan": {"resnet_layers": [1, 1, 1, 1], "resnet_width": 16, "word_dim": 128, "part_dim": 128,
             "relation_dim": 64},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--methods", nargs="+", default=list(METHOD_ARGS), choices=list(METHOD_ARGS))
    parser.add_argument("--out", default="runs/bench_methods")
    parser.add_argument("--results", default=str(RESULTS), help="where methods.json / .png go")
    parser.add_argument("--ids", type=int, default=DEMO_IDS, help="people in the synthetic dataset")
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = Path(args.out)
    data_dir = work / "data"
    if not (data_dir / "reid_raw.json").is_file():
        write_synthetic(data_dir, ids=args.ids, seed=0)
    data = load_dataset(data_dir)
    runs = {}
    for method in args.methods:
        for seed in args.seeds:
            name = f"{method}_s{seed}"
            best = train(TrainConfig(data=str(data_dir), out=str(work / name), method_args=METHOD_ARGS[method],
                                     **dict(RECIPES["tiny"], method=method, epochs=args.epochs, seed=seed,
                                            progress=False)))
            model = load_checkpoint(best).model
            runs[name] = {"method": method, "seed": seed, "seconds": training_seconds(work / name),
                          "parameters": sum(p.numel() for p in model.parameters()),
                          "set_shape": [model.set_size, int(model.clip.config.embed_dim)],
                          "t2i": evaluate_run(best, data)["beta=0.0"]}
            print(name, {k: round(runs[name]["t2i"][k], 2) for k in METRICS}, flush=True)
    summary = {}
    for method in args.methods:
        rows = [r["t2i"] for r in runs.values() if r["method"] == method]
        summary[method] = {k: {"mean": float(np.mean([r[k] for r in rows])), "std": float(np.std([r[k] for r in rows]))}
                           for k in rows[0]}
    result = {"benchmark": "methods", "machine": platform.node(), "threads": 2,
              "recipe": dict(RECIPES["tiny"], epochs=args.epochs), "method_args": METHOD_ARGS, "seeds": args.seeds,
              "test": {"ids": len({e.pid for e in data.test}), "images": len(data.test)},
              "summary": summary, "runs": runs}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "methods.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'t2i, mean ± std over seeds':28s}" + "".join(f"{k:>15s}" for k in METRICS))
    for name, m in summary.items():
        print(f"{name:28s}" + "".join(f"{m[k]['mean']:9.2f} ±{m[k]['std']:4.1f}" for k in METRICS))
    plot(summary, len(args.seeds), out / "methods.png")


def plot(summary: dict, seeds: int, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = np.arange(len(METRICS))
    width = 0.8 / len(summary)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for i, (name, m) in enumerate(summary.items()):
        ax.bar(x + (i - (len(summary) - 1) / 2) * width, [m[k]["mean"] for k in METRICS], width,
               yerr=[m[k]["std"] for k in METRICS], capsize=2, label=name)
    ax.set_xticks(x, METRICS)
    ax.set_ylabel(f"percent (mean ± std over {seeds} seed{'s' * (seeds > 1)})")
    ax.set_title("methods at the same budget: tiny on synthetic data, unseen test people")
    ax.legend(fontsize=8, ncol=len(summary))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
