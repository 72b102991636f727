"""8-bit galleries against fp16 on the demo model: retrieval metrics, the exact fp16 top-10 kept, bytes.

    .venv/bin/python benchmarks/bench_int8.py [--epochs 4] [--out runs/bench_int8] [--results benchmarks/results]

The demo's synthetic people (tiny_runs.synthetic_data), `tiny` (ESA) trained from scratch for
--epochs (a finished run under --out is reused). Its test images are encoded once and stored as a
gallery would store them: fp16 sets, and those quantized to int8 with a float32 scale per row
(kernels.quantize_sets, as `tbps gallery --set-dtype int8` does). Text-to-image R@1/5/10, mAP and
mINP of the unseen test people are scored by kernels.set_scores on each (fp32 sets beside them: the
model's own encoding); the share of each query's exact fp16 top-10 (kernels.search) that the 8-bit
gallery's top-10 keeps is measured on the test gallery and on a larger one (the training images
added as distractors). Bytes per item: the sets (and scales) alone, and the whole gallery directory
on disk per item (save_gallery of each). Writes RESULTS/int8.json and .png.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import kernels
from common import RESULTS, grouped_bars, machine_record, pyplot, save_plot, write_result
from export.gallery import gallery_bytes, save_gallery
from tiny_runs import METRICS, split_size, synthetic_data, train_tiny, training_seconds
from trainer.checkpoint import load_checkpoint
from trainer.evaluate import encode_split, rank_metrics

TOP = 10


def top10_kept(text: torch.Tensor, g16: torch.Tensor, g8: torch.Tensor, scale: torch.Tensor, params: dict) -> float:
    """Mean share of each query's exact fp16 top-10 that the 8-bit gallery's top-10 holds."""
    exact = kernels.search(text, g16, TOP, **params)[1]
    found = kernels.search(text, g8, TOP, scale=scale, **params)[1]
    return sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(exact, found)) / exact.numel()


def on_disk(sets: torch.Tensor, set_dtype: str, folder: Path) -> float:
    """Bytes per item of a gallery directory of these sets (no margin, cameras or times)."""
    n = sets.shape[0]
    paths = [f"cam00/2026-11-30/14/{i:06d}.jpg" for i in range(n)]
    path = save_gallery(folder / set_dtype, sets, torch.arange(n), paths, "bench", 16.0, 1.0, set_dtype=set_dtype)
    return gallery_bytes(path) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", default="runs/bench_int8")
    parser.add_argument("--results", default=str(RESULTS), help="where int8.json / .png go")
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = Path(args.out)
    data = synthetic_data(work / "data")
    best = train_tiny(work / "data", work / "esa_s0", "esa", 0, args.epochs, {})
    ckpt = load_checkpoint(best)
    model, params = ckpt.model, ckpt.model.score_params
    text, text_pids, image, image_pids = encode_split(model, ckpt.tokenizer, data.test)
    distractors = encode_split(model, ckpt.tokenizer, data.train)[2]
    g16 = image.half()  # what a gallery stores; 8-bit galleries quantize these (build_gallery)
    g8, scale = kernels.quantize_sets(g16.float())
    galleries = {"fp32": dict(gallery_sets=image), "fp16": dict(gallery_sets=g16),
                 "int8": dict(gallery_sets=g8, scale=scale)}
    metrics = {name: rank_metrics(kernels.set_scores(text, **g, **params), text_pids, image_pids)
               for name, g in galleries.items()}
    big16 = torch.cat([g16, distractors.half()])
    big8, big_scale = kernels.quantize_sets(big16.float())
    set_bytes = {"fp16": 2 * image[0].numel(), "int8": image[0].numel() + 4 * image.shape[1]}
    with tempfile.TemporaryDirectory() as tmp:
        disk = {name: on_disk(big16.float(), dtype, Path(tmp)) for name, dtype in (("fp16", "float16"),
                                                                                    ("int8", "int8"))}
    served = {"fp16": 2 * 5 * 512, "int8": 5 * 512 + 4 * 5}  # the served model's 5 x 512 sets
    result = {
        "benchmark": "int8", **machine_record("machine", "processor", "threads", "torch", "started_utc"),
        "command": f"benchmarks/bench_int8.py --epochs {args.epochs}", "model": "tiny (esa), seed 0",
        "epochs": args.epochs, "training_seconds": training_seconds(work / "esa_s0"),
        "set_shape": list(image.shape[1:]), "score_params": params, "test": split_size(data),
        "t2i": metrics,
        "top10_kept": {"test_gallery": {"items": len(g16), "share": top10_kept(text, g16, g8, scale, params)},
                       "with_train_distractors": {"items": len(big16),
                                                  "share": top10_kept(text, big16, big8, big_scale, params)}},
        "bytes_per_item": {"sets": set_bytes, "sets_served_5x512": served, "gallery_on_disk": disk},
        "quantization_error": {"max_abs": float((kernels.dequantize_sets(g8, scale) - g16.float()).abs().max()),
                               "mean_abs": float((kernels.dequantize_sets(g8, scale) - g16.float()).abs().mean())},
    }
    stem = Path(args.results) / "int8"
    write_result(stem, result)
    for name, m in metrics.items():
        print(f"{name:5s}" + "".join(f" {k}={m[k]:.2f}" for k in METRICS))
    print("top-10 of fp16 kept by int8:", {k: round(v["share"], 4) for k, v in result["top10_kept"].items()})
    print("bytes per item:", result["bytes_per_item"])
    fig, (ax, bx) = pyplot().subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    grouped_bars(ax, list(METRICS), {name: [m[k] for k in METRICS] for name, m in metrics.items()})
    ax.set_ylabel("percent")
    ax.set_title(f"text-to-image, tiny ESA ({args.epochs} epochs), {len(g16)} test images")
    ax.legend(fontsize=8)
    names = ["sets", "sets 5x512", "on disk"]
    grouped_bars(bx, names, {d: [set_bytes[d], served[d], disk[d]] for d in ("fp16", "int8")})
    bx.set_yscale("log")
    bx.set_ylabel("bytes per item")
    kept = result["top10_kept"]["with_train_distractors"]["share"]
    bx.set_title(f"bytes; int8 keeps {100 * kept:.1f}% of the fp16 top-10")
    bx.legend(fontsize=8)
    save_plot(fig, stem)


if __name__ == "__main__":
    main()
