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
from pathlib import Path

import torch

from common import RESULTS, machine_record, mean_std, write_result
from tiny_runs import (METRICS, evaluate_run, plot_summary, print_summary, split_size, synthetic_data, train_tiny,
                       training_seconds)
from trainer.checkpoint import load_checkpoint
from trainer.recipes import DEMO_IDS, RECIPES

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
    data = synthetic_data(work / "data", args.ids)
    runs = {}
    for method in args.methods:
        for seed in args.seeds:
            name = f"{method}_s{seed}"
            best = train_tiny(work / "data", work / name, method, seed, args.epochs, METHOD_ARGS[method])
            model = load_checkpoint(best).model
            runs[name] = {"method": method, "seed": seed, "seconds": training_seconds(work / name),
                          "parameters": sum(p.numel() for p in model.parameters()),
                          "set_shape": [model.set_size, int(model.clip.config.embed_dim)],
                          "t2i": evaluate_run(best, data)["beta=0.0"]}
            print(name, {k: round(runs[name]["t2i"][k], 2) for k in METRICS}, flush=True)
    summary = {method: mean_std([r["t2i"] for r in runs.values() if r["method"] == method])
               for method in args.methods}
    out = Path(args.results)
    write_result(out / "methods", {
        "benchmark": "methods", **machine_record("machine"), "threads": 2,
        "recipe": dict(RECIPES["tiny"], epochs=args.epochs), "method_args": METHOD_ARGS, "seeds": args.seeds,
        "test": split_size(data), "summary": summary, "runs": runs})
    print_summary(summary, 28)
    seeds = len(args.seeds)
    plot_summary(summary, out / "methods", f"percent (mean ± std over {seeds} seed{'s' * (seeds > 1)})",
                 "methods at the same budget: tiny on synthetic data, unseen test people",
                 fontsize=8, ncol=len(summary))


if __name__ == "__main__":
    main()
