"""`tiny` trained from scratch on the demo's synthetic people, by method and seed, and evaluated on
the unseen test people: the runs that bench_esa_vs_baseline.py and bench_methods.py compare; and
the one-epoch model with a random gallery that the serving benchmarks serve (`served_model`).

A library module of benchmarks/ (never run): finished runs are reused, so every comparison
trains and scores its runs the same way.
"""
from __future__ import annotations

import json
from pathlib import Path

from common import grouped_bars, pyplot, save_plot
from trainer.checkpoint import load_checkpoint
from trainer.data.formats import load_dataset
from trainer.data.synthetic import write_synthetic
from trainer.evaluate import adaptive_margin, blocked_metrics, encode_captions, encode_split
from trainer.fit import TrainConfig, train
from trainer.recipes import DEMO_IDS, recipe

BETAS = (0.0, 0.5, 1.0)  # weights of the gallery adaptive margin b_g
METRICS = ("R1", "R5", "R10", "mAP")  # those printed and plotted (the JSON has every metric)


def tiny_model(work: Path, image_size: tuple[int, int] = (64, 32), embed_dim: int | None = None):
    """(ONNX export directory, checkpoint, synthetic data folder) of a freshly trained one-epoch
    tiny ESA model (`embed_dim`: the tiny config's width of the embedding sets, or another)."""
    from export.to_onnx import export_onnx
    from trainer.model import CONFIG_DIR
    config = "tiny"
    if embed_dim is not None:
        work.mkdir(parents=True, exist_ok=True)
        config = str(work / "tiny_config.json")
        Path(config).write_text(json.dumps({**json.loads((CONFIG_DIR / "tiny.json").read_text()), "embed_dim": embed_dim}))
    data = write_synthetic(work / "data", ids=16, seed=0, image_size=image_size, progress=False)
    ckpt = load_checkpoint(train(TrainConfig(data=str(data), out=str(work / "run"), **recipe(
        "tiny", epochs=1, batch_size=16, progress=False, bpe_vocab=600, config=config))))
    return export_onnx(ckpt, work / "onnx").parent, ckpt, data


def served_model(work: Path, gallery_size: int, image_size: tuple[int, int] = (64, 32),
                 paths: list[str] | None = None, root: str = "") -> tuple[Path, Path, Path]:
    """(ONNX export directory, gallery file, synthetic data folder) of tiny_model; the gallery
    holds `gallery_size` random unit embedding sets under its fingerprint (search cost depends on
    N and the shapes, not on content), named `paths` under `root` (default: img0000000.jpg, ...).
    `image_size`: the synthetic images' (height, width)."""
    import torch
    import torch.nn.functional as F

    from export.gallery import save_gallery
    export, ckpt, data = tiny_model(work, image_size)
    torch.manual_seed(0)
    sets = F.normalize(torch.randn(gallery_size, ckpt.model.set_size, ckpt.config["embed_dim"]), dim=-1)
    gallery = save_gallery(work / "gallery", sets, torch.arange(gallery_size) // 4,
                           paths or [f"img{i:07d}.jpg" for i in range(gallery_size)], ckpt.fingerprint,
                           root=root, **ckpt.model.score_params)
    return export, gallery, data


def synthetic_data(data_dir: Path, ids: int = DEMO_IDS):
    """The synthetic dataset under data_dir (written on first use, seed 0), loaded."""
    if not (data_dir / "reid_raw.json").is_file():
        write_synthetic(data_dir, ids=ids, seed=0)
    return load_dataset(data_dir)


def train_tiny(data_dir: Path, out: Path, method: str, seed: int, epochs: int, method_args: dict) -> Path:
    """The best checkpoint of `tiny` trained with `method` (a finished run under `out` is reused)."""
    return train(TrainConfig(data=str(data_dir), out=str(out), method_args=method_args,
                             **recipe("tiny", method=method, epochs=epochs, seed=seed, progress=False)))


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


def split_size(data) -> dict:
    """The size of the test split, as the results record it."""
    return {"ids": len({e.pid for e in data.test}), "images": len(data.test)}


def print_summary(summary: dict, width: int) -> None:
    """One line per entry of `summary` ({name: {metric: {"mean", "std"}}}): mean ± std of each metric."""
    print(f"{'t2i, mean ± std over seeds':{width}s}" + "".join(f"{k:>15s}" for k in METRICS))
    for name, m in summary.items():
        print(f"{name:{width}s}" + "".join(f"{m[k]['mean']:9.2f} ±{m[k]['std']:4.1f}" for k in METRICS))


def plot_summary(summary: dict, stem: Path, ylabel: str, title: str, **legend) -> None:
    """stem.png: a bar per entry of `summary` and metric, the standard deviation as its error bar."""
    fig, ax = pyplot().subplots(figsize=(8, 3.8))
    grouped_bars(ax, list(METRICS), {name: [m[k]["mean"] for k in METRICS] for name, m in summary.items()},
                 errors={name: [m[k]["std"] for k in METRICS] for name, m in summary.items()})
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(**legend)
    save_plot(fig, stem)
