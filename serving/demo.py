"""The main job on the embedded default: synthetic data, the `tiny` model, CPU.

Stages: synthesize -> train -> export ONNX -> encode the gallery -> start a local Triton
server -> send held-out captions over gRPC: their top-5, the field's metrics and an HTML
results page (workdir/report.html). Each stage reuses what an earlier run built in the
work directory unless `fresh`. With `ui_port`, the server stays up with the search page
(serving/ui.py) on that port until Ctrl-C.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from export.build_gallery import build_gallery
from export.gallery import load_gallery
from export.manifest import load_manifest
from export.to_onnx import export_onnx
from serving.client import SearchClient
from serving.launch import TritonServer
from serving.report import spread, write_report
from serving.repository import write_repository
from serving.ui import serve_ui
from trainer.checkpoint import load_checkpoint
from trainer.data.formats import load_dataset
from trainer.data.synthetic import write_synthetic
from trainer.evaluate import rank_metrics
from trainer.fit import TrainConfig, train
from trainer.recipes import DEMO_IDS, recipe

TINY_RECIPE = recipe("tiny")
REPORT_QUERIES = 20  # captions shown on the results page (the metrics use all of them)


def _stage(name: str) -> None:
    print(f"\n== {name} ==", flush=True)


def _reusable(check) -> bool:
    """Whether an earlier run's artefact passes `check` (it raises if missing or stale)."""
    try:
        check()
        return True
    except (OSError, ValueError):
        return False


def run_demo(workdir: Path, fresh: bool = False, ids: int = DEMO_IDS,
             epochs: int = TINY_RECIPE["epochs"], shown: int = 5, ui_port: int | None = None) -> dict:
    if fresh:
        shutil.rmtree(workdir, ignore_errors=True)
    data_dir, run_dir = workdir / "data", workdir / "run"
    onnx_dir, gallery_path, repo = workdir / "onnx", workdir / "gallery", workdir / "repo"
    t0 = time.time()

    _stage(f"1/6 synthesize {ids} people -> {data_dir}")
    if (data_dir / "reid_raw.json").is_file():
        print("reusing the existing dataset (--fresh rebuilds it)")
    else:
        write_synthetic(data_dir, ids=ids, seed=0)

    _stage(f"2/6 train tiny ({TINY_RECIPE['method']}) on CPU -> {run_dir}")
    ckpt = load_checkpoint(train(TrainConfig(data=str(data_dir), out=str(run_dir), **dict(TINY_RECIPE, epochs=epochs))))

    _stage(f"3/6 export the encoders to ONNX -> {onnx_dir}")
    if _reusable(lambda: load_manifest(onnx_dir, ckpt.fingerprint)):
        print("reusing the export of this checkpoint")
    else:
        export_onnx(ckpt, onnx_dir, progress=True)

    _stage(f"4/6 encode the gallery (test split images) -> {gallery_path}")
    if _reusable(lambda: load_gallery(gallery_path, ckpt.fingerprint)):
        print("reusing the gallery of this checkpoint")
    else:
        build_gallery(ckpt.path, gallery_path, data=data_dir, split="test", backend="onnx", onnx_dir=onnx_dir)
    gallery = load_gallery(gallery_path)

    _stage(f"5/6 start a local Triton server on {repo}")
    shutil.rmtree(repo, ignore_errors=True)
    write_repository(onnx_dir, gallery_path, repo)
    test = load_dataset(data_dir).test
    queries = [(c, e.pid) for e in test for c in e.captions]
    with TritonServer(repo) as server, SearchClient(server.grpc_url) as client:
        print(f"ready: gRPC {server.grpc_url}")
        _stage(f"6/6 {len(queries)} held-out captions over gRPC (unseen people)")
        hits = client.search([c for c, _ in queries], k=len(gallery))  # full rankings: mAP needs them
        metrics = _results(workdir, queries, hits, gallery, ckpt, shown)
        print(f"done in {time.time() - t0:.0f} s; checkpoint {ckpt.path}")
        if ui_port is None:
            print("search page: tbps demo --ui (the server stays up with the page on http://127.0.0.1:8080/ "
                  "until Ctrl-C)")
            return metrics
        try:
            serve_ui(server.grpc_url, gallery.root, port=ui_port, cameras=gallery.cameras)
        except KeyboardInterrupt:  # how the page is meant to stop
            print("stopped the search page and the server")
    return metrics


def _results(workdir: Path, queries: list, hits: list, gallery, ckpt, shown: int) -> dict:
    """The field's metrics of the served rankings, a few examples and the results page."""
    # the scores of every gallery image, back in gallery order, for the field's metrics
    scores = np.full((len(queries), len(gallery)), -np.inf, dtype=np.float32)
    for row, ranked in enumerate(hits):
        scores[row, [h.index for h in ranked]] = [h.score for h in ranked]
    metrics = rank_metrics(scores, [pid for _, pid in queries], gallery.ids.numpy())
    print("text-to-image: " + "  ".join(f"{k} {v:6.2f}" for k, v in metrics.items()))
    print("\nexample queries (top-5: person id, * = the person described):")
    for q in range(0, len(queries), max(1, len(queries) // shown))[:shown]:
        caption, pid = queries[q]
        marks = "  ".join(f"{h.person_id}{'*' if h.person_id == pid else ''}" for h in hits[q][:5])
        print(f"  \"{caption}\"\n    person {pid} -> {marks}")
    sample = spread(len(queries), REPORT_QUERIES)
    page = write_report(workdir / "report.html",
                        [{"text": queries[q][0], "person_id": queries[q][1], "hits": hits[q][:10]} for q in sample],
                        metrics, gallery.root, title="tbps demo: tiny ESA on synthetic pedestrians, served over gRPC",
                        info={"checkpoint": ckpt.fingerprint, "queries": len(queries), "gallery images": len(gallery)})
    print(f"\nresults page: {page}")
    return metrics
