"""ESA against the baseline at the same budget on the synthetic data, over seeds.

    .venv/bin/python benchmarks/bench_esa_vs_baseline.py [--seeds 0 1 2] [--epochs 15]
        [--esa-arg asm_weight=10 --tag asm10]

Trains `tiny` with each method and seed (reusing finished runs under --out), evaluates
text-to-image on the unseen test people without and with the gallery adaptive margin b_g
(estimated from the training captions), and writes benchmarks/results/esa_vs_baseline.json
and .png: mean and standard deviation over seeds.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from common import machine_record, mean_std, result_stem, write_result
from tiny_runs import (BETAS, evaluate_run, plot_summary, print_summary, split_size, synthetic_data, train_tiny,
                       training_seconds)
from trainer.checkpoint import read_config
from trainer.recipes import RECIPES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--methods", nargs="+", default=["baseline", "esa"])
    parser.add_argument("--out", help="runs folder (default runs/bench_esa, runs/bench_esa_eN for other --epochs: "
                                      "a finished run is reused, so budgets must not share a folder)")
    parser.add_argument("--esa-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="an ESA hyper-parameter (repeatable); results go to esa_vs_baseline_TAG.json")
    parser.add_argument("--tag", default="", help="names the ESA variant's runs and result files")
    args = parser.parse_args()
    esa_args = {k: json.loads(v) for k, v in (a.split("=", 1) for a in args.esa_arg)}
    suffix = f"_{args.tag}" if args.tag else ""
    torch.set_num_threads(2)
    work = Path(args.out or ("runs/bench_esa" if args.epochs == 15 else f"runs/bench_esa_e{args.epochs}"))
    data = synthetic_data(work / "data")
    runs = {}
    for method in args.methods:
        for seed in args.seeds:
            variant = esa_args if method == "esa" else {}
            name = f"{method}{suffix if variant else ''}_s{seed}"
            best = train_tiny(work / "data", work / name, method, seed, args.epochs, variant)
            # the run's own arguments, defaults resolved: a reused run may predate a change of default
            runs[name] = {"method": method, "method_args": read_config(best)["method_args"], "seed": seed,
                          "seconds": training_seconds(work / name), "t2i": evaluate_run(best, data)}
            print(name, {k: round(v["R1"], 2) for k, v in runs[name]["t2i"].items()}, flush=True)
    summary = {f"{method} beta={beta}": mean_std([r["t2i"][f"beta={beta}"] for r in runs.values()
                                                  if r["method"] == method])
               for method in args.methods for beta in BETAS}
    stem = result_stem(f"esa_vs_baseline{suffix}")
    write_result(stem, {"benchmark": "esa_vs_baseline", **machine_record("machine"), "threads": 2,
                        "recipe": dict(RECIPES["tiny"], epochs=args.epochs), "esa_args": esa_args,
                        "seeds": args.seeds, "test": split_size(data), "summary": summary, "runs": runs})
    print_summary(summary, 32)
    plot_summary(summary, stem, "percent (mean ± std over seeds)",
                 "baseline vs ESA, tiny on synthetic data, unseen test people", fontsize=7, ncol=2)


if __name__ == "__main__":
    main()
