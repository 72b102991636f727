"""tbps's recipe against IRRA's (`--recipe irra`) at the same budget on the synthetic data, over seeds.

    .venv/bin/python benchmarks/bench_recipes.py [--seeds 0 1 2] [--epochs 15] [--method baseline]
        [--out runs/bench_recipes] [--results benchmarks/results]

The demo's synthetic people, the `tiny` scale from scratch (config, epochs, batch, learning rate,
warm-up) for both; `tiny+irra` swaps in every choice where IRRA differs (trainer/recipes.py:
sampler, resize, erasing, Adam eps, clipping, decay rule, per-epoch schedule). The method is
IRRA's own model without its MLM head, `baseline`. Finished runs under --out are reused.
Writes RESULTS/recipes.json and .png: text-to-image R@1/5/10/mAP (and mINP) on the unseen test
people, mean and standard deviation over seeds.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from common import RESULTS, machine_record, mean_std, write_result
from tiny_runs import METRICS, evaluate_run, plot_summary, print_summary, split_size, synthetic_data, training_seconds
from trainer.fit import TrainConfig, train
from trainer.recipes import DEMO_IDS, recipe

RECIPES = ("tiny", "tiny+irra")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--method", default="baseline")
    parser.add_argument("--out", default="runs/bench_recipes")
    parser.add_argument("--results", default=str(RESULTS), help="where recipes.json / .png go")
    parser.add_argument("--ids", type=int, default=DEMO_IDS, help="people in the synthetic dataset")
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = Path(args.out)
    data = synthetic_data(work / "data", args.ids)
    runs = {}
    for seed in args.seeds:  # seed by seed, so that a run cut short still compares pairs
        for name in RECIPES:
            run = work / f"{name.replace('+', '_')}_s{seed}"
            best = train(TrainConfig(data=str(work / "data"), out=str(run), **recipe(
                name, method=args.method, epochs=args.epochs, seed=seed, progress=False)))
            runs[run.name] = {"recipe": name, "seed": seed, "seconds": training_seconds(run),
                              "t2i": evaluate_run(best, data)["beta=0.0"]}
            print(run.name, {k: round(runs[run.name]["t2i"][k], 2) for k in METRICS}, flush=True)
    summary = {name: mean_std([r["t2i"] for r in runs.values() if r["recipe"] == name]) for name in RECIPES}
    out = Path(args.results)
    write_result(out / "recipes", {
        "benchmark": "recipes", **machine_record("machine"), "threads": 2, "method": args.method,
        "recipes": {name: recipe(name, epochs=args.epochs) for name in RECIPES}, "seeds": args.seeds,
        "test": split_size(data), "summary": summary, "runs": runs})
    print_summary(summary, 28)
    seeds = len(args.seeds)
    plot_summary(summary, out / "recipes", f"percent (mean ± std over {seeds} seed{'s' * (seeds > 1)})",
                 f"tbps's recipe vs IRRA's: {args.method}, tiny on synthetic data, unseen test people",
                 fontsize=8, ncol=len(summary))


if __name__ == "__main__":
    main()
