"""`tbps`: the engine's command line, composed at the end of the line.

The trainer's commands (synth, train, eval, import: trainer/cli.py), the export stage's (export,
gallery, trt: export/cli.py), then this stage's: repo, serve, search, ui, report and demo, and
the live gallery's ingest, delete and compact (serving/live_commands.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from export import ann_index
from export.cli import add_commands as add_export_commands
from serving import ui
from serving.live_commands import DEFAULT_URL, add_connection, credentials
from serving.live_commands import add_commands as add_live_commands
from serving.security_commands import add_commands as add_security_commands
from trainer.cli import add_commands as add_trainer_commands
from trainer.cli import run
from trainer.recipes import DEMO_IDS, RECIPES


def cmd_demo(a) -> None:
    from serving.demo import run_demo
    run_demo(Path(a.workdir), fresh=a.fresh, ids=a.ids, epochs=a.epochs, ui_port=a.ui_port)


def cmd_repo(a) -> None:
    if a.shards > 1:
        from serving.shards import write_shard_repositories
        repos = write_shard_repositories(a.source, a.gallery, a.shards, a.out, profile=a.profile, engines=a.engines,
                                         max_batch_size=a.max_batch, local_shards=a.local_shards,
                                         two_stage=a.two_stage, ann_proxy=a.ann_proxy, nprobe=a.nprobe,
                                         ann_missing=a.ann_missing)
    else:
        from serving.repository import write_repository
        repos = [write_repository(a.source, a.gallery, a.out, profile=a.profile, engines=a.engines,
                                  max_batch_size=a.max_batch, local_shards=a.local_shards, two_stage=a.two_stage,
                                  ann_proxy=a.ann_proxy, nprobe=a.nprobe, ann_missing=a.ann_missing)]
    for repo in repos:
        print(f"wrote {a.profile} model repository {repo} (serve it with: tbps serve {repo})")


def cmd_serve(a) -> int:
    from serving.access import secret_from
    from serving.launch import Security, serve
    security = Security(a.tls_cert, a.tls_key, a.tls_client_ca, a.keys, secret_from(a.admin_key_file, "TBPS_ADMIN_KEY"),
                        a.audit, a.audit_sync_ms)
    return serve(a.repository, grpc_port=a.grpc_port, host=a.host, metrics_port=a.metrics_port,
                 http_port=a.http_port, security=security, insecure=a.insecure)


def cmd_search(a) -> None:
    from serving.client import Filter, SearchClient, SearchError, print_hits
    kinds = [name for name, given in (("text", a.text), ("--image", a.image), ("--like", a.like)) if given]
    if len(kinds) != 1:
        raise ValueError("search by one of: descriptions, --image FILE or --like INDEX" +
                         (f" (got {' and '.join(kinds)})" if kinds else ""))
    flt = Filter(tuple(a.camera), a.since, a.until)
    try:
        with SearchClient(a.url or [DEFAULT_URL], credentials=credentials(a)) as client:
            if a.text:
                labels, hits = a.text, client.search(a.text, k=a.k, filter=flt)
            elif a.image:
                labels, hits = a.image, client.search_images([Path(f).read_bytes() for f in a.image], k=a.k, filter=flt)
            else:
                labels, hits = [f"like #{i}" for i in a.like], client.like(a.like, k=a.k, filter=flt)
    except SearchError as e:
        raise ValueError(f"the server refused the query: {e}") from None
    print_hits(labels, hits, as_json=a.json)


def cmd_report(a) -> None:
    from serving.report import report_from_checkpoint
    out = report_from_checkpoint(a.checkpoint, a.gallery, a.data, a.out, split=a.split, queries=a.queries,
                                 device=a.device)
    print(f"wrote {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tbps", description="text-based person search engine")
    sub = parser.add_subparsers(dest="command", required=True)
    add_trainer_commands(sub)
    add_export_commands(sub)

    p = sub.add_parser("repo", help="write a Triton model repository for a checkpoint and a gallery")
    p.add_argument("source", help="a checkpoint (or run directory), or an ONNX export directory")
    p.add_argument("gallery", help="a gallery file built by the same checkpoint (export/build_gallery.py)")
    p.add_argument("--out", required=True, help="a new folder (with --shards: one shard{i}/ per shard)")
    p.add_argument("--profile", choices=["portable", "production"], default="portable",
                   help="portable: encoders in ONNX Runtime inside the python backend (any tritonserver); "
                        "production: Triton's onnxruntime / TensorRT backends on GPU")
    p.add_argument("--engines", default=None, help="production: a folder of export/to_trt.py engines")
    p.add_argument("--shards", type=int, default=1, help="split the gallery over this many repositories")
    p.add_argument("--local-shards", type=int, default=1, metavar="S",
                   help="split each server's gallery over S GPUs of that server (production: gallery_search_<i> on "
                        "GPU i), merged inside the server: any Triton client gets the global top-k")
    p.add_argument("--two-stage", type=int, default=None, metavar="CANDIDATES",
                   help="search each query's CANDIDATES nearest items of every segment's ANN index (tbps ann), "
                        "scored exactly; segments without one are scanned (default: exact search everywhere)")
    p.add_argument("--ann-proxy", choices=ann_index.PROXIES, default="set", help="the indexes' proxy (tbps ann)")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists each query visits (default: half of them)")
    p.add_argument("--ann-missing", choices=ann_index.MISSING, default="scan",
                   help="two-stage, a segment without a usable ANN index: scan it (slower, never wrong) or "
                        "refuse to load")
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
    p.add_argument("--http-port", type=int, default=8000,
                   help="port of the HTTP/REST (KServe v2) endpoint, always on 127.0.0.1: it has no TLS of its own "
                        "(put a TLS reverse proxy in front); the keys apply to it as to gRPC")
    p.add_argument("--tls-cert", default=None, metavar="PEM", help="gRPC over TLS: the server's certificate")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="gRPC over TLS: the server's private key")
    p.add_argument("--tls-client-ca", default=None, metavar="PEM",
                   help="mutual TLS: only clients with a certificate signed by this CA connect")
    p.add_argument("--keys", default=None, metavar="FILE",
                   help="API keys by role (tbps keys add): searching needs a viewer key, ingest and erasure an operator's")
    p.add_argument("--admin-key-file", default=None, metavar="FILE",
                   help="the key of model control and Triton's other admin protocols (default: $TBPS_ADMIN_KEY)")
    p.add_argument("--audit", default=None, metavar="DIR",
                   help="keep the audit trail here: every search, ingest and erasure, hash-chained (tbps audit)")
    p.add_argument("--audit-sync-ms", type=float, default=None, metavar="N",
                   help="the audit trail's weaker mode: records in the page cache before the answer, on disk within "
                        "N ms (default: $TBPS_AUDIT_SYNC_MS, else 0: on disk before each answer; docs/security.md)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a --host other than loopback without TLS and keys")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("search", help="query a running server over gRPC: by description, image or gallery item")
    p.add_argument("text", nargs="*", help="one or more descriptions (quote each)")
    p.add_argument("--image", action="append", default=[], metavar="FILE", help="an image as the query (repeatable)")
    p.add_argument("--like", action="append", default=[], type=int, metavar="INDEX",
                   help="a gallery item (its index, as results give it) as the query: more of this person")
    p.add_argument("-k", type=int, default=10, help="results per query")
    p.add_argument("--camera", action="append", default=[], help="only images of this camera (repeatable: any of)")
    p.add_argument("--since", default=None, help="only images taken at or after this ISO 8601 time (UTC unless "
                                                 "it says otherwise)")
    p.add_argument("--until", default=None, help="only images taken at or before this ISO 8601 time")
    add_connection(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_search)

    add_live_commands(sub)
    add_security_commands(sub)

    p = sub.add_parser("ui", help="the search page over a running server, on http://127.0.0.1:8080",
                       description=ui.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ui.add_arguments(p)
    p.set_defaults(fn=ui.run)

    p = sub.add_parser("report", help="write an HTML results page: top-10 of sample captions and the metrics")
    p.add_argument("checkpoint")
    p.add_argument("gallery", help="a gallery file built by the same checkpoint (export/build_gallery.py)")
    p.add_argument("--data", required=True, help="the dataset whose captions are the queries")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--queries", type=int, default=20, help="captions shown, spread over the split (metrics use all)")
    p.add_argument("--out", default="report.html")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("demo", help="the main job on synthetic data: synthesize, train tiny, evaluate")
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--fresh", action="store_true", help="rebuild everything instead of reusing it")
    p.add_argument("--ids", type=int, default=DEMO_IDS, help="people in the synthetic dataset")
    p.add_argument("--epochs", type=int, default=RECIPES["tiny"]["epochs"])
    p.add_argument("--ui", dest="ui_port", nargs="?", type=int, const=8080, default=None, metavar="PORT",
                   help="then keep the server up with the search page on PORT (default 8080) until Ctrl-C")
    p.set_defaults(fn=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    run(build_parser(), argv)


if __name__ == "__main__":
    main()
