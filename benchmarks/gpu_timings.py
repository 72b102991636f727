"""gpu_check's timed sections: 3. timings (kernels.search against the torch reference, eager and compiled,
and the copy floor), 4. encoders and 5. train_step of the vit-b16-384x128 ESA model.
A library module of benchmarks/ (never run).
"""
from __future__ import annotations

import json
import math
import time
import traceback

import torch

import kernels
from gpu_runtime import (ALPHA, KSET, RUN, TOPK, Budget, Record, bench, call_seconds, error_text, log, size, sync,
                         unit_sets)
from kernels.set_similarity import set_similarity_reference

NUM_CLASSES = 11003  # CUHK-PEDES' training identities: the ID classifier's real size


# ------------------------------------------------------------------------------------------------ 3. timings
def block_topk(q, gb, k):
    """The torch baseline's unit of work: dense reference scores of a gallery block and their top-k."""
    return set_similarity_reference(q, gb, alpha=ALPHA).topk(k, dim=1)


def blocked_topk(fn, q, g, k, block):
    """Top-k over the gallery, `fn` (block_topk, eager or compiled) per block, merged: memory bounded by the block."""
    parts = [fn(q, g[n0:n0 + block], k) for n0 in range(0, g.shape[0], block)]
    s, pos = torch.cat([p[0] for p in parts], dim=1).topk(k, dim=1)
    offsets = [p[1] + n0 for p, n0 in zip(parts, range(0, g.shape[0], block))]
    return s, torch.cat(offsets, dim=1).gather(1, pos)


def rates(ms: float, row: dict) -> dict:
    return {"ms": ms, "GB_per_s": row["gallery_bytes"] / ms / 1e6, "TFLOP_per_s": row["flop"] / ms / 1e9,
            "over_floor": ms / row["floor_ms"] if row.get("floor_ms") else None}


def section_timings(rec: Record, budget: Budget) -> None:
    ns, qs, d = size((100_000, 1_000_000), (64, 128)), size((1, 64), (1, 4)), size(512, 32)
    rec.update(K=KSET, D=d, dtype="fp16", k=TOPK, alpha=ALPHA, floor={}, rows=[],
               gallery_bytes_note="bytes read: the fp16 gallery once; floor = half a device-to-device copy "
                                  "of it (the copy reads and writes), measured in this run")
    gen = torch.Generator(device=RUN.device).manual_seed(3)
    g_all = unit_sets(max(ns), KSET, d, torch.float16, RUN.device, gen)
    dst = torch.empty_like(g_all)
    for n in ns:
        ms = bench(lambda: dst[:n].copy_(g_all[:n]))
        rec["floor"][str(n)] = {"copy_ms": ms, "copy_GB_per_s": 2 * n * KSET * d * 2 / ms / 1e6, "floor_ms": ms / 2}
    dst = None  # its 5 GB back before the timings
    if RUN.device == "cuda":
        torch.cuda.empty_cache()
    rec.save()
    log(f"timings: copy floor {json.dumps(rec['floor'])}")
    # blocks that divide every N (the compiled baseline then compiles once per Q); the [Q, block, 5, 5]
    # float32 cosines and their temporaries stay under ~1 GB
    blocks = {qn: size(100_000 // max(1, qn // 8), 32) for qn in qs}
    rows = {}
    for qn in qs:
        for n in ns:
            rows[n, qn] = {"N": n, "Q": qn, "block": blocks[qn], "gallery_bytes": n * KSET * d * 2,
                           "flop": 2 * qn * KSET * n * KSET * d, "floor_ms": rec["floor"][str(n)]["floor_ms"],
                           "methods": {}}
    rec["rows"] = list(rows.values())
    # eager on CPU: the tracing is checked, no C++ build
    compiled = torch.compile(block_topk, dynamic=False, backend=size("inductor", "eager"))
    for phase in ("kernels.search", "torch eager (blocked)", "torch.compile (blocked)"):
        for (n, qn), row in rows.items():
            g, q = g_all[:n], unit_sets(qn, KSET, d, torch.float16, RUN.device, gen)
            fn = {"kernels.search": lambda: kernels.search(q, g, TOPK),
                  "torch eager (blocked)": lambda: blocked_topk(block_topk, q, g, TOPK, blocks[qn]),
                  "torch.compile (blocked)": lambda: blocked_topk(compiled, q, g, TOPK, blocks[qn])}[phase]
            row["methods"][phase] = entry = {}
            skip = (compile_skip_reason(rec, row, budget) if phase == "torch.compile (blocked)"
                    else "past the section's budget" if budget.left() < 5 else None)
            if skip:
                entry["skipped"] = skip
            else:
                try:
                    entry["first_call_s"] = call_seconds(fn)
                    slow = phase != "kernels.search"
                    entry.update(rates(bench(fn, warmup=5 if slow else 25, rep=50 if slow else 100), row))
                except torch.OutOfMemoryError as e:
                    entry["error"] = f"out of memory: {str(e)[:300]}"
                except Exception as e:  # noqa: BLE001 - the other rows still run
                    entry.update(error=error_text(e), trace=traceback.format_exc()[-1500:])
                if RUN.device == "cuda":
                    torch.cuda.empty_cache()
            rec.save()
            log(f"timings: N={n:,} Q={qn} {phase}: {json.dumps(entry)[:300]}")
    rec["ok"] = all(isinstance(r["methods"].get(m, {}).get("ms"), float)
                    for r in rec["rows"] for m in ("kernels.search", "torch eager (blocked)"))


def compile_skip_reason(rec: Record, row: dict, budget: Budget) -> str | None:
    """torch.compile compiles once per Q (the block shape is the same at every N), at its first call, which
    cannot be interrupted: start a compile only with time to spare, and time a larger N only if its cost,
    scaled from the smaller N at the same Q, fits the budget."""
    done = [r for r in rec["rows"] if r["Q"] == row["Q"]
            and isinstance(r["methods"].get("torch.compile (blocked)", {}).get("ms"), float)]
    if not done and RUN.device == "cuda" and budget.left() < 25:
        return f"only {budget.left():.0f} s of the section's budget left: not enough to compile"
    if done:
        est_s = 12 * done[-1]["methods"]["torch.compile (blocked)"]["ms"] * row["N"] / done[-1]["N"] / 1e3
        if est_s > budget.left() - 5:  # do_bench runs it about a dozen times
            return f"estimated {est_s:.0f} s to time (scaled from N={done[-1]['N']:,}): past the budget"
    elif budget.left() < 5:
        return "past the section's budget"
    return None


# ------------------------------------------------------------------------------------------------ 4-5. the model
def build_model():
    """The project's ESA model on its ViT-B/16 384x128 config (random init: speed does not depend on the weights)."""
    from trainer.model import load_config
    from trainer.retriever import Retriever
    config = load_config(size("vit-b16-384x128", "tiny"))
    eot = config.text.vocab_size - 1
    return Retriever(config, "esa", NUM_CLASSES, eot), config, eot


def example_batch(config, eot, batch, gen):
    h, w = config.vision.image_size
    pixels = torch.randn(batch, 3, h, w, generator=gen)
    ids = torch.randint(1, eot, (batch, config.text.context_length), dtype=torch.int32, generator=gen)
    ids[torch.arange(batch), torch.randint(8, 60, (batch,), generator=gen)] = eot
    return pixels.to(RUN.device), ids.to(RUN.device)


def section_encoders(rec: Record, budget: Budget) -> None:
    model, config, eot = build_model()
    dtype = size(torch.float16, torch.float32)  # CPU (smoke) has no fast fp16
    model = model.to(RUN.device, dtype).eval()
    rec.update(config=size("vit-b16-384x128", "tiny"), method="esa", dtype=str(dtype), rows=[])
    gen = torch.Generator().manual_seed(4)
    for encoder in ("image", "text"):
        for batch in size((1, 32), (1, 2)):
            entry = {"encoder": encoder, "batch": batch}
            if budget.left() < 3:
                entry["skipped"] = "past the section's budget"
            else:
                pixels, ids = example_batch(config, eot, batch, gen)
                # fp32 pixels, as served: the image tower casts them
                fn = (lambda: model.encode_image(pixels)) if encoder == "image" else (lambda: model.encode_text(ids))
                try:
                    with torch.inference_mode():
                        entry["out_shape"] = list(fn().shape)
                        entry["ms"] = bench(fn)
                    entry["items_per_s"] = batch / entry["ms"] * 1e3
                except Exception as e:  # noqa: BLE001
                    entry.update(error=error_text(e), trace=traceback.format_exc()[-1500:])
            rec["rows"].append(entry)
            rec.save()
            log(f"encoders: {json.dumps(entry)[:300]}")
    rec["ok"] = all(isinstance(r.get("ms"), float) for r in rec["rows"])


def section_train_step(rec: Record, budget: Budget) -> None:
    model, config, eot = build_model()
    model = model.to(RUN.device).train()
    batch, per_id = size(64, 8), 4  # fit.py's batch: 16 identities x 4 captions
    amp = RUN.device == "cuda"  # as fit.py: bf16 autocast where supported, else fp16 with a loss scaler
    amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)  # fit.py: one group per parameter, same update
    rec.update(config=size("vit-b16-384x128", "tiny"), method="esa", batch=batch, num_classes=NUM_CLASSES,
               amp=str(amp_dtype) if amp else "off", optimizer="Adam", grad_clip=5.0,
               parameters=sum(p.numel() for p in model.parameters()))
    gen = torch.Generator().manual_seed(5)
    pixels, ids = example_batch(config, eot, batch, gen)
    labels = torch.arange(batch // per_id).repeat_interleave(per_id).to(RUN.device)
    losses = {}

    def step():
        nonlocal losses
        with torch.autocast(RUN.device, dtype=amp_dtype, enabled=amp):
            losses = model(pixels, ids, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(sum(losses.values())).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        scaler.step(optimizer)
        scaler.update()

    rec["first_step_s"] = call_seconds(step)  # includes the Triton gradient kernels' compile
    rec["second_step_s"] = call_seconds(step)
    rec.save()
    if RUN.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps = max(1, min(size(10, 1), int((budget.left() - 2) / max(rec["second_step_s"], 1e-3))))
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()  # the only sync point of the timed loop
    rec["steps_timed"] = steps
    rec["ms_per_step"] = (time.perf_counter() - t) / steps * 1e3
    rec["images_per_s"] = batch / rec["ms_per_step"] * 1e3
    if RUN.device == "cuda":
        rec["peak_memory_GB"] = torch.cuda.max_memory_allocated() / 1e9
    rec["losses"] = {k: float(v.detach()) for k, v in losses.items()}
    rec["ok"] = all(math.isfinite(v) for v in rec["losses"].values())
    log(f"train_step: {rec['ms_per_step']:.1f} ms/step, losses {rec['losses']}")

