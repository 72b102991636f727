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
import platform
from pathlib import Path

import numpy as np
import torch

from trainer.checkpoint import load_checkpoint, read_config
from trainer.data.formats import load_dataset
from trainer.data.synthetic import write_synthetic
from trainer.recipes import DEMO_IDS, RECIPES
from trainer.evaluate import adaptive_margin, blocked_metrics, encode_captions, encode_split
from trainer.fit import TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results"
BETAS = (0.0, 0.5, 1.0)


def training_seconds(run: Path) -> float:
    """Wall time of the training epochs from the run's log, so a reused run reports its real cost."""
    events = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return round(sum(e["seconds"] for e in events if e["event"] == "epoch"), 1)


def evaluate_run(best: Path, data) -> dict:
    """Text-to-image metrics for each beta, the margin estimated once from the training captions."""
    ckpt = load_checkpoint(best)
    model, tok = ckpt.model, ckpt.tokenizer
    text, text_pids, image, image_pids = encode_split(model, tok, data.test)
    bank = encode_captions(model, tok, [c for e in data.train for c in e.captions])
    margin = adaptive_margin(bank, image, model.score, beta=1.0)
    return {f"beta={beta}": blocked_metrics(text, text_pids, image, image_pids, model.score,
                                            beta * margin if beta else None)
            for beta in BETAS}


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
    data_dir = work / "data"
    if not (data_dir / "reid_raw.json").is_file():
        write_synthetic(data_dir, ids=DEMO_IDS, seed=0)
    data = load_dataset(data_dir)
    runs = {}
    for method in args.methods:
        for seed in args.seeds:
            variant = esa_args if method == "esa" else {}
            name = f"{method}{suffix if variant else ''}_s{seed}"
            best = train(TrainConfig(data=str(data_dir), out=str(work / name), method_args=variant,
                                     **dict(RECIPES["tiny"], method=method, epochs=args.epochs, seed=seed,
                                            progress=False)))
            # the run's own arguments, defaults resolved: a reused run may predate a change of default
            runs[name] = {"method": method, "method_args": read_config(best)["method_args"], "seed": seed,
                          "seconds": training_seconds(work / name), "t2i": evaluate_run(best, data)}
            print(name, {k: round(v["R1"], 2) for k, v in runs[name]["t2i"].items()}, flush=True)
    summary = {}
    for method in args.methods:
        for beta in BETAS:
            rows = [r["t2i"][f"beta={beta}"] for r in runs.values() if r["method"] == method]
            summary[f"{method} beta={beta}"] = {k: {"mean": float(np.mean([r[k] for r in rows])),
                                                    "std": float(np.std([r[k] for r in rows]))} for k in rows[0]}
    result = {"benchmark": "esa_vs_baseline", "machine": platform.node(), "threads": 2,
              "recipe": dict(RECIPES["tiny"], epochs=args.epochs), "esa_args": esa_args, "seeds": args.seeds,
              "test": {"ids": len({e.pid for e in data.test}), "images": len(data.test)},
              "summary": summary, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"esa_vs_baseline{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'t2i, mean ± std over seeds':32s}" + "".join(f"{k:>15s}" for k in ("R1", "R5", "R10", "mAP")))
    for name, m in summary.items():
        print(f"{name:32s}" + "".join(f"{m[k]['mean']:9.2f} ±{m[k]['std']:4.1f}" for k in ("R1", "R5", "R10", "mAP")))
    plot(summary, RESULTS / f"esa_vs_baseline{suffix}.png")


def plot(summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = ["R1", "R5", "R10", "mAP"]
    x = np.arange(len(keys))
    width = 0.8 / len(summary)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for i, (name, m) in enumerate(summary.items()):
        ax.bar(x + (i - (len(summary) - 1) / 2) * width, [m[k]["mean"] for k in keys], width,
               yerr=[m[k]["std"] for k in keys], capsize=2, label=name)
    ax.set_xticks(x, keys)
    ax.set_ylabel("percent (mean ± std over seeds)")
    ax.set_title("baseline vs ESA, tiny on synthetic data, unseen test people")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
