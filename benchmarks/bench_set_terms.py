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
import platform
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kernels.set_similarity import slot_chamfer
from trainer.checkpoint import load_checkpoint
from trainer.data.formats import load_dataset
from trainer.evaluate import blocked_metrics, encode_split, global_cosine

RESULTS = Path(__file__).resolve().parent / "results"
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
                       **{f"{ranking} {k}": {"mean": float(np.mean([r["t2i"][ranking][k] for r in rs])),
                                             "std": float(np.std([r["t2i"][ranking][k] for r in rs]))}
                          for ranking in RANKINGS for k in ("R1", "mAP")},
                       **{f"same-slot cosine, {m}": float(np.mean([r["same_slot_cosine"][m] for r in rs]))
                          for m in ("text", "image")}}
               for group, rs in groups.items()}
    RESULTS.mkdir(exist_ok=True)
    result = {"benchmark": "set_terms", "machine": platform.node(), "data": str(args.data),
              "test": {"ids": len({e.pid for e in data.test}), "images": len(data.test)},
              "summary": summary, "runs": runs}
    (RESULTS / "set_terms.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'t2i R@1, mean ± std':24s}" + "".join(f"{r:>16s}" for r in RANKINGS) + f"{'same-slot cos':>16s}")
    for group, s in summary.items():
        print(f"{group:24s}" + "".join(f"{s[f'{r} R1']['mean']:10.2f} ±{s[f'{r} R1']['std']:4.1f}" for r in RANKINGS)
              + f"{s['same-slot cosine, image']:16.3f}")
    plot(summary, RESULTS / "set_terms.png")


def plot(summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = np.arange(len(RANKINGS))
    width = 0.8 / len(summary)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, (group, s) in enumerate(summary.items()):
        ax.bar(x + (i - (len(summary) - 1) / 2) * width, [s[f"{r} R1"]["mean"] for r in RANKINGS], width,
               yerr=[s[f"{r} R1"]["std"] for r in RANKINGS], capsize=2,
               label=f"{group} (same-slot cos {s['same-slot cosine, image']:.2f})")
    ax.set_xticks(x, [f"ranked by {r}" for r in RANKINGS])
    ax.set_ylabel("t2i R@1 (mean ± std over seeds)")
    ax.set_title("what each term of the ESA score carries (tiny, synthetic, unseen people)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
