"""Encoder latency and throughput: torch eager against ONNX Runtime, on the same machine, same run.

    .venv/bin/python benchmarks/bench_encoders.py [--configs tiny vit-b16-384x128] [--batches 1 32]
                                                  [--threads 2] [--method esa] [--budget 3]
                                                  [--results benchmarks/results]

Both encoders (text: 77 token ids; image: the config's size) of a randomly initialised model
(speed does not depend on the weights), exported by export.to_onnx.export_encoder. Each case is
timed for about `--budget` seconds, the backends taking turns in two blocks (at least 2 runs
each, after an untimed one per block); the median is reported. On CPU: torch fp32 eager and
ONNX Runtime (CPU provider), both limited to `--threads`. On a GPU also: torch fp16 eager,
torch fp16 replayed from a CUDA graph, and TensorRT (fp16 ONNX, strongly typed) when it imports.
The machine's load matters: on a shared machine, compare the ratios rather than absolute times.
Writes benchmarks/results/encoders_{cpu,gpu}.json and .png (with --quick: *_quick.*; --results:
another folder), and prints ONNX Runtime / torch ratios.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import onnxruntime as ort
import torch

from common import RESULTS, grouped_bars, machine_record, pyplot, result_stem, save_plot, write_result
from export.to_onnx import encoder_specs, export_encoder
from trainer.model import load_config
from trainer.retriever import Retriever

CONTEXT = 77


def measure(fns: dict[str, Callable[[], object]], budget: float, rounds: int = 2) -> dict[str, float]:
    """Median seconds of each `fn()` (each must block until its result is ready), over about
    `budget` seconds in all. The backends take turns in `rounds` blocks, so a change of load from
    other processes hits them alike; each block starts with an untimed run (warm-up, and time for
    the previous backend's idle threads, which spin for a while, to let go of the cores)."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            first = time.perf_counter() - start
            for _ in range(max(1, min(25, round(budget / (rounds * len(fns) * max(first, 1e-6)))))):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def example_inputs(model: Retriever, batch: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, model.eot_id, (batch, CONTEXT), dtype=torch.int32, generator=g)
    ids[:, 30] = model.eot_id
    h, w = model.clip.config.vision.image_size
    return {"text_encoder": ids, "image_encoder": torch.randn(batch, 3, h, w, generator=g)}


def encode(model: Retriever, name: str, x: torch.Tensor) -> torch.Tensor:
    return model.encode_text(x) if name == "text_encoder" else model.encode_image(x)


def cpu_cases(model: Retriever, onnx_dir: Path, batches: list[int], threads: int, budget: float) -> list[dict]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    rows = []
    for name, spec in encoder_specs(model, CONTEXT).items():
        session = ort.InferenceSession(str(onnx_dir / spec["file"]), options, providers=["CPUExecutionProvider"])
        for batch in batches:
            x = example_inputs(model, batch)[name]
            feed = {spec["inputs"][0]["name"]: x.numpy()}
            with torch.inference_mode():
                seconds = measure({"torch fp32 eager (CPU)": lambda: encode(model, name, x),
                                   "onnxruntime fp32 (CPU)": lambda: session.run(None, feed)}, budget)
            rows += [{"encoder": name, "batch": batch, "backend": b, "seconds": t} for b, t in seconds.items()]
            print(f"  {name} batch {batch}: " + ", ".join(f"{b} {t * 1e3:.1f} ms" for b, t in seconds.items()),
                  flush=True)
    return rows


def gpu_cases(model: Retriever, onnx_dir: Path, batches: list[int], budget: float) -> list[dict]:
    """torch fp16 eager and CUDA graph on the GPU; TensorRT fp16 where it imports."""
    trt_plans = _trt_engines(model, onnx_dir, max(batches))  # exported from the fp32 CPU model
    half = model.cuda().half()
    rows = []

    def synced(fn):
        def run():
            fn()
            torch.cuda.synchronize()
        return run

    for name in ("text_encoder", "image_encoder"):
        for batch in batches:
            x = example_inputs(model, batch)[name].cuda()  # fp32 pixels: the tower casts them
            graph = _cuda_graph(lambda: encode(half, name, x))
            fns = {"torch fp16 eager (GPU)": synced(lambda: encode(half, name, x)),
                   "torch fp16 CUDA graph (GPU)": synced(graph.replay)}
            if trt_plans:
                from export.trt_runner import TrtRunner
                runner = TrtRunner(trt_plans[name])
                feed = {"text_encoder": "input_ids", "image_encoder": "pixels"}[name]
                fns["TensorRT fp16 (GPU)"] = synced(lambda: runner(**{feed: x}))
            with torch.inference_mode():
                seconds = measure(fns, budget)
            rows += [{"encoder": name, "batch": batch, "backend": b, "seconds": t} for b, t in seconds.items()]
    return rows


def _cuda_graph(fn) -> torch.cuda.CUDAGraph:
    """`fn` captured once (static input and output buffers), replayed without Python or launch overhead."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):  # warm up on a side stream, as capture requires
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        fn()
    return graph


def _trt_engines(model: Retriever, onnx_dir: Path, max_batch: int) -> dict[str, Path] | None:
    from export.to_trt import build_engine, missing_requirements
    missing = missing_requirements()
    if missing:
        print(f"  no TensorRT rows: missing {missing}")
        return None
    plans = {}
    for name, spec in encoder_specs(model, CONTEXT).items():
        fp16_onnx = export_encoder(model, name, spec, onnx_dir / f"{name}.fp16.onnx", model.eot_id, fp16=True)
        (inp,) = spec["inputs"]
        shapes = {inp["name"]: tuple((b, *inp["shape"][1:]) for b in (1, max_batch, max_batch))}
        plans[name] = build_engine(fp16_onnx, onnx_dir / f"{name}.plan", shapes, onnx_dir / "timing.cache")
    return plans


def plot(result: dict, stem: Path) -> None:
    configs = list(dict.fromkeys(r["config"] for r in result["results"]))
    backends = list(dict.fromkeys(r["backend"] for r in result["results"]))
    fig, axes = pyplot().subplots(1, len(configs), figsize=(6 * len(configs), 4.5), squeeze=False)
    for ax, config in zip(axes[0], configs):
        rows = [r for r in result["results"] if r["config"] == config]
        cases = list(dict.fromkeys((r["encoder"], r["batch"]) for r in rows))
        throughput = {(r["encoder"], r["batch"], r["backend"]): r["throughput"] for r in rows}
        grouped_bars(ax, [f"{e.split('_')[0]}\nbatch {b}" for e, b in cases],
                     {backend: [throughput.get((*c, backend), 0) for c in cases] for backend in backends})
        ax.set_yscale("log")
        ax.set_ylabel("items / s")
        ax.set_title(f"{config} ({result['device']}, {result['threads']} threads)")
        ax.legend(fontsize=8)
    save_plot(fig, stem)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["tiny", "vit-b16-384x128"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--method", default="esa")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timed runs per case (at least 2 runs)")
    parser.add_argument("--quick", action="store_true", help="tiny only, 1 s a case")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON / PNG go")
    args = parser.parse_args()
    if args.quick:
        args.configs, args.budget = ["tiny"], 1.0
    torch.set_num_threads(args.threads)
    gpu = torch.cuda.is_available()
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            torch.manual_seed(0)
            cfg = load_config(config)
            model = Retriever(cfg, args.method, num_classes=1, eot_id=cfg.text.vocab_size - 1).eval()
            onnx_dir = Path(tmp) / config
            onnx_dir.mkdir()
            print(f"{config}: exporting ONNX ...", flush=True)
            for name, spec in encoder_specs(model, CONTEXT).items():
                export_encoder(model, name, spec, onnx_dir / spec["file"], model.eot_id)
            new = cpu_cases(model, onnx_dir, args.batches, args.threads, args.budget)
            if gpu:
                new += gpu_cases(model, onnx_dir, args.batches, args.budget)
            for r in new:
                r.update(config=config, latency_ms=round(r["seconds"] * 1e3, 3),
                         throughput=round(r["batch"] / r["seconds"], 2))
                del r["seconds"]
            rows += new
    ratios = {}
    for r in rows:
        if r["backend"] == "onnxruntime fp32 (CPU)":
            base = next(t for t in rows if t["backend"] == "torch fp32 eager (CPU)"
                        and (t["config"], t["encoder"], t["batch"]) == (r["config"], r["encoder"], r["batch"]))
            ratios[f"{r['config']} {r['encoder']} batch {r['batch']}"] = round(base["latency_ms"] / r["latency_ms"], 2)
    result = {"benchmark": "encoders", **machine_record("machine"), "device": "GPU" if gpu else "CPU",
              "threads": args.threads, "method": args.method,
              "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]}, **machine_record("torch"),
              "onnxruntime": ort.__version__, "results": rows,
              "onnxruntime_speedup_over_torch": ratios}
    stem = result_stem(f"encoders_{'gpu' if gpu else 'cpu'}", args.quick, args.results)
    write_result(stem, result)
    plot(result, stem)
    print(f"\n{'config':<18}{'encoder':<15}{'batch':>6}  {'backend':<30}{'ms':>10}{'items/s':>10}")
    for r in rows:
        print(f"{r['config']:<18}{r['encoder']:<15}{r['batch']:>6}  {r['backend']:<30}"
              f"{r['latency_ms']:>10.2f}{r['throughput']:>10.1f}")
    print("\nONNX Runtime speed-up over torch eager (latency ratio, > 1: ONNX Runtime faster):")
    for case, ratio in ratios.items():
        print(f"  {case}: {ratio:.2f}x")
    print(f"wrote {stem}.json and .png")


if __name__ == "__main__":
    main()
