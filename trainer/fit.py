"""The training loop: set-up, epochs, validation, checkpoint; read it top to bottom.

One process on CPU or GPU, or many under `torchrun` (DDP: gloo on CPU, NCCL on GPU).
Each epoch ends with a complete checkpoint `OUT/epoch_NNN/` (weights, config, tokenizer,
optimizer / scheduler / RNG state); a run started again with the same `--out` resumes from
the newest one and continues exactly as if it had never stopped.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from trainer.checkpoint import (TOKENIZER_NAME, epoch_dirs, load_train_state, load_weights,
                                read_config, save_checkpoint)
from trainer.data.dataset import CaptionDataset
from trainer.data.formats import load_dataset, pid_map
from trainer.data.pixels import RESIZE_FILTERS, Preprocess
from trainer.data.sampler import IdentityBatchSampler, RandomBatchSampler
from trainer.data.tokenizer import Tokenizer, train_bpe
from trainer.data.transforms import ERASE_FILLS, build_transform
from trainer.evaluate import evaluate
from trainer.heads import DEFAULT_METHOD, get_method
from trainer.model import load_config
from trainer.progress import EpochProgress
from trainer.retriever import Retriever


SAMPLERS = ("identity", "random")
PARAM_RULES = ("tbps", "irra")


@dataclass
class TrainConfig:
    """Defaults are tbps's recipe for fine-tuning CLIP ViT-B/16: IRRA's hyper-parameters with tbps's
    own choices where the fields below say so; `recipe("irra")` is IRRA's exactly (trainer/recipes.py,
    docs/recipes.md). Precision is the one deliberate difference from IRRA in every recipe: IRRA
    trains fp16 weights without loss scaling; here weights stay fp32 under bf16 autocast on GPU."""
    data: str
    out: str
    recipe: str = "tbps"             # the named recipe these values came from; printed and recorded
    config: str = "vit-b16-384x128"
    method: str = DEFAULT_METHOD
    method_args: dict = field(default_factory=dict)
    init: str | None = None          # the method's pretrained weights (Method.pretrained)
    bpe: str | None = None           # CLIP merges file; None: train a small BPE on the captions
    bpe_vocab: int = 2048
    epochs: int = 60
    batch_size: int = 64             # per process
    sampler: str = "identity"        # identity: P people x num_instances captions; random: shuffled (IRRA)
    num_instances: int = 4           # captions per identity in a batch (identity sampler)
    lr: float = 1e-5
    new_lr_factor: float = 5.0       # heads that are not part of CLIP
    bias_lr_factor: float = 2.0
    weight_decay: float = 4e-5
    param_rule: str = "tbps"         # which parameters skip decay and take bias_lr_factor (_param_groups)
    adam_eps: float = 1e-8           # IRRA 1e-3: damps every step whose gradient RMS is below it
    warmup_epochs: float = 5.0
    warmup_factor: float = 0.1
    lr_per_epoch: bool = False       # warm-up and cosine stepped once an epoch (IRRA), not every step
    grad_clip: float = 5.0           # max global gradient norm; 0 disables
    resize: str = "bicubic"          # resize filter (trainer/data/pixels.py); recorded in the checkpoint
    erase_max: float = 0.33          # random erasing's largest area fraction (IRRA 0.4)
    erase_fill: str = "zero"         # zero: the mean colour; mean: IRRA's mean numbers in normalised space
    amp: bool = True                 # mixed precision, GPU only
    seed: int = 0
    workers: int = 2
    eval_batch_size: int = 128
    log_every: int = 10
    keep: int = 2                    # epoch checkpoints kept (best/ is kept apart)
    val_fraction: float = 0.05       # held-out training ids where a dataset has no val split
    progress: bool = True

    def __post_init__(self):
        choices = {"sampler": SAMPLERS, "param_rule": PARAM_RULES, "erase_fill": ERASE_FILLS, "resize": tuple(RESIZE_FILTERS)}
        for name, known in choices.items():
            value = getattr(self, name)
            if value not in known:
                raise ValueError(f"{name} must be one of {', '.join(known)}, got {value!r}")
        if self.adam_eps <= 0:
            raise ValueError(f"adam_eps must be positive, got {self.adam_eps!r}")


class _Gather(torch.autograd.Function):
    """all_gather whose backward sums the gradient of every process's copy back to its owner:
    with DDP's gradient averaging this reproduces the single-process gradient of the
    batch-contrastive loss on the whole global batch."""

    @staticmethod
    def forward(ctx, tensor):
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n:(dist.get_rank() + 1) * n]


def _rng_state() -> dict:
    """Every RNG the run draws from, as tensors and numbers (loadable with weights_only)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, mt, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "python": [version, list(mt), gauss_next],
             "numpy": [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, mt, gauss_next = state["python"]
    random.setstate((version, tuple(mt), gauss_next))
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
    """The learning-rate factor of a step: linear warm-up, then cosine to 0. With lr_per_epoch
    the factor moves once an epoch (IRRA's scheduler, stepped after each epoch): every step of
    epoch e takes the factor of step e on a scale of one step an epoch."""
    per = 1 if cfg.lr_per_epoch else steps_per_epoch
    warmup = cfg.warmup_epochs * per
    total = cfg.epochs * per

    def factor(step: int) -> float:
        if cfg.lr_per_epoch:
            step //= steps_per_epoch
        if step < warmup:  # linear from warmup_factor to 1
            return cfg.warmup_factor + (1 - cfg.warmup_factor) * step / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))
    return factor


def _param_groups(model: Retriever, cfg: TrainConfig) -> list[dict]:
    """One group a parameter. New (not pretrained) parameters take lr x new_lr_factor. tbps: no
    decay on any 1-D parameter (biases, norm weights, CLS embedding), biases lr x bias_lr_factor on
    top. irra (IRRA's solver/build.py, in its order): names containing "bias" take base lr x
    bias_lr_factor and no decay, then names containing "classifier" take base lr x new_lr_factor (its bias: x5)."""
    new = model.new_parameter_names()
    groups = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lr = cfg.lr * (cfg.new_lr_factor if name in new else 1.0)
        decay = cfg.weight_decay
        if cfg.param_rule == "irra":
            if "bias" in name:
                lr, decay = cfg.lr * cfg.bias_lr_factor, 0.0
            if "classifier" in name:
                lr = cfg.lr * cfg.new_lr_factor
        elif p.ndim <= 1:
            lr, decay = lr * cfg.bias_lr_factor if name.endswith("bias") else lr, 0.0
        groups.append({"params": [p], "lr": lr, "weight_decay": decay, "name": name})
    return groups


def _tokenizer(cfg: TrainConfig, out: Path, train_entries, resume_dir: Path | None,
               is_main: bool) -> Tokenizer:
    if resume_dir is not None:
        return Tokenizer(resume_dir / TOKENIZER_NAME)
    if cfg.bpe:
        return Tokenizer(cfg.bpe)
    path = out / TOKENIZER_NAME
    if is_main:
        train_bpe((c for e in train_entries for c in e.captions), cfg.bpe_vocab, path)
    if dist.is_initialized():
        dist.barrier()
    return Tokenizer(path)


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) a run in `cfg.out`; returns the best-on-validation checkpoint."""
    ddp = "RANK" in os.environ
    if ddp:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    is_main = rank == 0
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    try:
        return _train(cfg, rank, world, is_main, device)
    finally:
        if ddp:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, rank: int, world: int, is_main: bool, device: torch.device) -> Path:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    epochs = epoch_dirs(out)
    resume_dir = epochs[-1] if epochs else None
    if resume_dir is not None:  # the architecture and recipe are the run's, not the new flags'
        saved = read_config(resume_dir)["meta"]
        if saved["epoch"] >= cfg.epochs:
            if is_main:
                print(f"{out} has finished {saved['epoch']} epochs already: nothing to train")
            return out / "best"
        saved = saved["train"]
        cfg = dataclasses.replace(TrainConfig(**saved), out=cfg.out, epochs=cfg.epochs,
                                  progress=cfg.progress, workers=cfg.workers)
    method = get_method(cfg.method, cfg.method_args)  # fail fast on a bad method before any work
    torch.manual_seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)

    data = load_dataset(cfg.data, val_fraction=cfg.val_fraction)
    labels = pid_map(data.train)
    tokenizer = _tokenizer(cfg, out, data.train, resume_dir, is_main)
    clip_config, load_init = load_config(cfg.config), None
    clip_config.text.vocab_size = tokenizer.vocab_size
    if cfg.init:  # the method's pretrained weights may define the architecture (CLIP's do)
        clip_config, load_init = method.pretrained(cfg.init, clip_config)
    if clip_config.text.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"the CLIP weights {cfg.init} have a vocabulary of {clip_config.text.vocab_size} "
                         f"tokens but the tokenizer has {tokenizer.vocab_size}: pass --bpe with "
                         f"CLIP's bpe_simple_vocab_16e6.txt.gz")
    preprocess = Preprocess(clip_config.vision.image_size, cfg.resize)
    model = Retriever(clip_config, cfg.method, len(labels), tokenizer.eot_id, cfg.method_args, preprocess)
    if load_init is not None:
        load_init(model)
    model.to(device)

    pad = max(1, round(10 * preprocess.size[0] / 384))  # IRRA pads 10 px at 384 high
    transform = build_transform(preprocess, train=True, pad=pad, erase_max=cfg.erase_max, erase_fill=cfg.erase_fill)
    dataset = CaptionDataset(data.train, tokenizer, transform, labels, **method.dataset_options)
    if cfg.sampler == "random":
        sampler = RandomBatchSampler(len(dataset), cfg.batch_size, cfg.seed, rank, world)
    else:
        sampler = IdentityBatchSampler(dataset.labels, cfg.batch_size, cfg.num_instances, cfg.seed, rank, world)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.workers,
                                         persistent_workers=False)
    steps_per_epoch = len(sampler)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(dataset)} training captions make no batch of {cfg.batch_size} per process")
    optimizer = torch.optim.Adam(_param_groups(model, cfg), lr=cfg.lr, betas=(0.9, 0.999), eps=cfg.adam_eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, steps_per_epoch))
    use_cuda_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_cuda_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_cuda_amp and amp_dtype == torch.float16)

    start_epoch, best = 0, {"epoch": -1, "val": None}
    if resume_dir is not None:
        load_weights(resume_dir, model)
        state = load_train_state(resume_dir)
        if len(state["rng"]) != world:  # each process's RNG stream is part of the exact resume
            raise ValueError(f"{resume_dir} was written by a run of {len(state['rng'])} process(es): "
                             f"resume it with the same number, not {world}")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"][rank])
        start_epoch, best = state["epoch"] + 1, state["best"]
    log = _Log(out / "log.jsonl", is_main, keep_before_epoch=start_epoch)
    if is_main:
        print(f"recipe {cfg.recipe} ({'resumed' if resume_dir else 'new run'}): {cfg.method}, {cfg.sampler} "
              f"sampler, {cfg.resize} resize, Adam eps {cfg.adam_eps:g}, lr {cfg.lr:g} "
              f"{'per epoch' if cfg.lr_per_epoch else 'per step'}, grad clip {cfg.grad_clip:g}")
        log.write(event="start", resumed_from=str(resume_dir) if resume_dir else None,
                  world_size=world, device=str(device), steps_per_epoch=steps_per_epoch,
                  config=dataclasses.asdict(cfg))

    net = DistributedDataParallel(model) if world > 1 else model
    gather = _Gather.apply if world > 1 else None
    meta = {"train": dataclasses.asdict(cfg), "data": str(Path(cfg.data).resolve()),
            "dataset": data.name, "val_note": data.val_note}
    val_metrics = None
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        sampler.set_epoch(epoch)
        progress = EpochProgress(loader, steps_per_epoch, epoch + 1, cfg.epochs, cfg.log_every, is_main and cfg.progress)
        t0 = time.time()
        for i, batch in enumerate(progress):
            step = epoch * steps_per_epoch + i
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_cuda_amp):
                other = {"other_ids": batch["other_ids"].to(device)} if "other_ids" in batch else {}
                losses = net(batch["pixels"].to(device), batch["ids"].to(device),
                             batch["label"].to(device), gather, **other)
            loss = sum(losses.values())
            if not torch.isfinite(loss):  # a device sync every step: a NaN stops the run before it reaches the weights
                raise FloatingPointError(f"non-finite loss at epoch {epoch + 1} step {i}: "
                                         f"{ {k: v.item() for k, v in losses.items()} }")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            lr = scheduler.get_last_lr()[0]  # the rate this step took (group 0), before the scheduler moves it
            scheduler.step()
            if is_main and (step % cfg.log_every == 0 or progress.due(i)):
                value = loss.item()  # a device sync, only on the steps that report
                if progress.due(i):
                    progress.report(i, value, lr)
                if step % cfg.log_every == 0:
                    log.write(event="step", epoch=epoch + 1, step=step, loss=value, lr=lr,
                              **{k: v.item() for k, v in losses.items()})
        val_metrics = evaluate(model, tokenizer, data.val, device, cfg.eval_batch_size) if is_main else None
        progress.end(val_metrics)
        rng = [_rng_state()] * world  # every process's stream goes in rank 0's checkpoint
        if world > 1:
            dist.all_gather_object(rng, _rng_state())
        if is_main:
            improved = best["val"] is None or val_metrics["t2i"]["R1"] > best["val"]["t2i"]["R1"]
            if improved:
                best = {"epoch": epoch + 1, "val": val_metrics}
            state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict(), "rng": rng, "epoch": epoch, "best": best}
            meta_epoch = dict(meta, epoch=epoch + 1, val=val_metrics)
            path = save_checkpoint(out / f"epoch_{epoch + 1:03d}", model, tokenizer, meta_epoch, state)
            if improved:
                save_checkpoint(out / "best", model, tokenizer, meta_epoch)
            for old in epoch_dirs(out)[:-cfg.keep]:
                shutil.rmtree(old)
            log.write(event="epoch", epoch=epoch + 1, seconds=round(time.time() - t0, 2),
                      val=val_metrics, checkpoint=str(path))
        if world > 1:
            dist.barrier()
    if is_main:  # at least one epoch ran: a finished run returned before training
        log.write(event="summary", best_epoch=best["epoch"], best_val=best["val"], last_val=val_metrics)
    return out / "best"


class _Log:
    """JSON lines, one event a line. On resume, lines of epochs after the checkpoint go,
    so the log reads as if the run had never stopped."""

    def __init__(self, path: Path, enabled: bool, keep_before_epoch: int):
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if json.loads(line).get("epoch", 0) <= keep_before_epoch]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, **event) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps({"time": round(time.time(), 3), **event}) + "\n")
