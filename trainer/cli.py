"""`tbps`: the command line. Each subcommand imports its stage lazily, so `tbps --help` is fast."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 128x48, got {text!r}") from None
    return h, w


def _key_value(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, so the recipe has a single definition."""
    from trainer.fit import TrainConfig
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name in ("data", "out"):
            p.add_argument(flag, required=True)
        elif f.name == "method_args":
            p.add_argument("--method-arg", dest="method_args", action="append", type=_key_value,
                           default=[], metavar="KEY=VALUE", help="a hyper-parameter of the method")
        elif f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            p.add_argument(flag, type=kind, default=f.default, help=f"default: {f.default}")


def cmd_synth(a) -> None:
    from trainer.data.synthetic import write_synthetic
    out = write_synthetic(a.out, ids=a.ids, seed=a.seed, image_size=a.image_size, overwrite=a.overwrite)
    print(f"wrote {out / 'reid_raw.json'}")


def cmd_train(a) -> None:
    from trainer.fit import TrainConfig, train
    args = {f.name: getattr(a, f.name) for f in dataclasses.fields(TrainConfig)}
    args["method_args"] = dict(a.method_args)
    best = train(TrainConfig(**args))
    if os.environ.get("RANK", "0") == "0":  # one line, not one per torchrun process
        print(f"best checkpoint: {best}")


def cmd_eval(a) -> None:
    import torch
    from trainer.checkpoint import load_checkpoint
    from trainer.data.formats import load_dataset
    from trainer.evaluate import evaluate
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = load_checkpoint(a.checkpoint, device)
    data = load_dataset(a.data)
    entries = data.split(a.split)
    bank = [c for e in data.train for c in e.captions] if a.margin else ()
    metrics = evaluate(ckpt.model, ckpt.tokenizer, entries, device, a.batch_size, a.workers,
                       progress=not a.json, margin_bank=bank, margin_beta=a.margin)
    if a.json:
        print(json.dumps(metrics))
        return
    print(f"{ckpt.path} on {a.data} [{a.split}]: {len(entries)} images")
    for direction, m in metrics.items():
        print(f"  {direction}: " + "  ".join(f"{k} {v:6.2f}" for k, v in m.items()))


def cmd_demo(a) -> None:
    from trainer.demo import run_demo
    run_demo(Path(a.workdir), fresh=a.fresh, ids=a.ids, epochs=a.epochs)


def cmd_repo(a) -> None:
    if a.shards > 1:
        from serving.shards import write_shard_repositories
        repos = write_shard_repositories(a.source, a.gallery, a.shards, a.out, profile=a.profile, engines=a.engines,
                                         max_batch_size=a.max_batch)
    else:
        from serving.repository import write_repository
        repos = [write_repository(a.source, a.gallery, a.out, profile=a.profile, engines=a.engines,
                                  max_batch_size=a.max_batch)]
    for repo in repos:
        print(f"wrote {a.profile} model repository {repo} (serve it with: tbps serve {repo})")


def cmd_serve(a) -> None:
    from serving.launch import serve
    sys.exit(serve(a.repository, grpc_port=a.grpc_port, host=a.host, metrics_port=a.metrics_port))


def cmd_search(a) -> None:
    from serving.client import SearchClient, SearchError, print_hits
    try:
        with SearchClient(a.url or ["127.0.0.1:8001"]) as client:
            print_hits(a.text, client.search(a.text, k=a.k), as_json=a.json)
    except SearchError as e:
        raise ValueError(f"the server refused the query: {e}") from None


def cmd_report(a) -> None:
    from serving.report import report_from_checkpoint
    out = report_from_checkpoint(a.checkpoint, a.gallery, a.data, a.out, split=a.split, queries=a.queries,
                                 device=a.device)
    print(f"wrote {out}")


def build_parser() -> argparse.ArgumentParser:
    from trainer.recipes import DEMO_IDS, RECIPES
    parser = argparse.ArgumentParser(prog="tbps", description="text-based person search engine")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic pedestrian dataset (CUHK-PEDES format)")
    p.add_argument("--out", required=True)
    p.add_argument("--ids", type=int, default=DEMO_IDS, help="number of people")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=_size, default=(128, 48), metavar="HxW")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(fn=cmd_synth)

    p = sub.add_parser("train", help="train a model (resumes if OUT holds a run)")
    _add_train_flags(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("eval", help="retrieval metrics of a checkpoint (IRRA protocol)")
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--margin", type=float, default=0.0, metavar="BETA",
                   help="subtract BETA x the gallery adaptive margin b_g, estimated from the "
                        "training captions (text-to-image only; 0: off)")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("demo", help="the main job on synthetic data: synthesize, train tiny, evaluate")
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--fresh", action="store_true", help="rebuild everything instead of reusing it")
    p.add_argument("--ids", type=int, default=DEMO_IDS, help="people in the synthetic dataset")
    p.add_argument("--epochs", type=int, default=RECIPES["tiny"]["epochs"])
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("repo", help="write a Triton model repository for a checkpoint and a gallery")
    p.add_argument("source", help="a checkpoint (or run directory), or an ONNX export directory")
    p.add_argument("gallery", help="a gallery file built by the same checkpoint (export/build_gallery.py)")
    p.add_argument("--out", required=True, help="a new folder (with --shards: one shard{i}/ per shard)")
    p.add_argument("--profile", choices=["portable", "production"], default="portable",
                   help="portable: encoders in ONNX Runtime inside the python backend (any tritonserver); "
                        "production: Triton's onnxruntime / TensorRT backends on GPU")
    p.add_argument("--engines", default=None, help="production: a folder of export/to_trt.py engines")
    p.add_argument("--shards", type=int, default=1, help="split the gallery over this many repositories")
    p.add_argument("--max-batch", type=int, default=None,
                   help="largest batch of the models (default 64; with --engines: the engines' own, "
                        "which it may lower, not raise)")
    p.set_defaults(fn=cmd_repo)

    p = sub.add_parser("serve", help="run the bundled Triton server on a model repository (Ctrl-C stops)")
    p.add_argument("repository")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: loopback only)")
    p.add_argument("--metrics-port", type=int, default=8002,
                   help="port of Triton's Prometheus metrics, http://HOST:PORT/metrics")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("search", help="query a running server over gRPC")
    p.add_argument("text", nargs="+", help="one or more descriptions (quote each)")
    p.add_argument("-k", type=int, default=10, help="results per description")
    p.add_argument("--url", action="append", default=[],
                   help="host:port of the server's gRPC endpoint; repeat for each shard (default 127.0.0.1:8001)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_search)

    p = sub.add_parser("report", help="write an HTML results page: top-10 of sample captions and the metrics")
    p.add_argument("checkpoint")
    p.add_argument("gallery", help="a gallery file built by the same checkpoint (export/build_gallery.py)")
    p.add_argument("--data", required=True, help="the dataset whose captions are the queries")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--queries", type=int, default=20, help="captions shown, spread over the split (metrics use all)")
    p.add_argument("--out", default="report.html")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.set_defaults(fn=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (OSError, ValueError) as e:
        # errors a user can meet: one clear line, no traceback
        print(f"tbps {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
