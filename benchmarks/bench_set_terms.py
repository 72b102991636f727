"""What each term of a trained ESA model's score carries, on the unseen test people.

    .venv/bin/python benchmarks/bench_set_terms.py runs/bench_esa/esa_s0 runs/bench_esa/esa_s1 ...

For each run's best checkpoint, text-to-image R@1 and mAP ranked three ways: by the global
row alone, by the K slots alone (smooth Chamfer over rows 1..K), and by the model's own score
(global cosine + set_weight x smooth Chamfer over the whole sets). And how much the slots
depend on the input: the mean cosine between the same slot of two different test items
(1.0: every item gets the same slot, a collapsed head that adds nothing to the ranking).
Runs named NAME_sSEED are averaged per NAME. Writes benchmarks/results/set_terms.json and .png.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from common import grouped_bars, machine_record, mean_std, pyplot, result_stem, save_plot, write_result
from kernels.set_similarity import slot_chamfer
from tiny_runs import split_size
from trainer.checkpoint import load_checkpoint
from trainer.data.formats import load_dataset
from trainer.evaluate import blocked_metrics, encode_split, global_cosine
RANKINGS = ("global row", "slots", "full score")


def same_slot_cosine(sets: Tensor) -> float:
    """Mean over slots k of the mean cosine between slot k of two different items."""
    n = sets.shape[0]
    slots = sets[:, 1:]
    total = slots.sum(0).pow(2).sum(-1)  # per slot: sum over all pairs i, j of cos, i == j included
    return float(((total - n) / (n * (n - 1))).mean())


def run_terms(run: Path, data) -> dict:
    ckpt = load_checkpoint(run / "best")
    model = ckpt.model
    if model.set_size < 2:
        raise SystemExit(f"{run}: method {model.method!r} has no slots (set size {model.set_size})")
    text, text_pids, image, image_pids = encode_split(model, ckpt.tokenizer, data.test)
    alpha = model.score_params["alpha"]

    def slots_only(q: Tensor, g: Tensor, margin=None) -> Tensor:
        return slot_chamfer(q, g, alpha)

    scores = dict(zip(RANKINGS, (global_cosine, slots_only, model.score)))
    t2i = {name: {k: v for k, v in blocked_metrics(text, text_pids, image, image_pids, score).items()
                  if k in ("R1", "mAP")} for name, score in scores.items()}
    return {"t2i": t2i, "same_slot_cosine": {"text": same_slot_cosine(text), "image": same_slot_cosine(image)},
            "method_args": ckpt.config["method_args"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="training output folders (each with best/)")
    parser.add_argument("--data", type=Path, default=Path("runs/bench_esa/data"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load_dataset(args.data)
    runs = {}
    for run in args.runs:
        runs[run.name] = run_terms(run, data)
        print(run.name, json.dumps({k: round(v["R1"], 2) for k, v in runs[run.name]["t2i"].items()}), flush=True)
    groups: dict[str, list[dict]] = {}
    for name, r in runs.items():
        groups.setdefault(re.sub(r"_s\d+$", "", name), []).append(r)
    summary = {group: {"runs": len(rs),
                       **mean_std([{f"{ranking} {k}": r["t2i"][ranking][k] for ranking in RANKINGS
                                    for k in ("R1", "mAP")} for r in rs]),
                       **{f"same-slot cosine, {m}": float(np.mean([r["same_slot_cosine"][m] for r in rs]))
                          for m in ("text", "image")}}
               for group, rs in groups.items()}
    stem = result_stem("set_terms")
    write_result(stem, {"benchmark": "set_terms", **machine_record("machine"), "data": str(args.data),
                        "test": split_size(data), "summary": summary, "runs": runs})
    print(f"{'t2i R@1, mean ± std':24s}" + "".join(f"{r:>16s}" for r in RANKINGS) + f"{'same-slot cos':>16s}")
    for group, s in summary.items():
        print(f"{group:24s}" + "".join(f"{s[f'{r} R1']['mean']:10.2f} ±{s[f'{r} R1']['std']:4.1f}" for r in RANKINGS)
              + f"{s['same-slot cosine, image']:16.3f}")
    plot(summary, stem)


def plot(summary: dict, stem: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(7, 3.6))
    label = {group: f"{group} (same-slot cos {s['same-slot cosine, image']:.2f})" for group, s in summary.items()}
    grouped_bars(ax, [f"ranked by {r}" for r in RANKINGS],
                 {label[group]: [s[f"{r} R1"]["mean"] for r in RANKINGS] for group, s in summary.items()},
                 errors={label[group]: [s[f"{r} R1"]["std"] for r in RANKINGS] for group, s in summary.items()})
    ax.set_ylabel("t2i R@1 (mean ± std over seeds)")
    ax.set_title("what each term of the ESA score carries (tiny, synthetic, unseen people)")
    ax.legend(fontsize=7)
    save_plot(fig, stem)


if __name__ == "__main__":
    main()
