"""End-to-end serving latency: text over gRPC -> tokenizer -> text encoder -> gallery search.

    .venv/bin/python benchmarks/bench_serving.py [--quick] [--gallery-size 20000] [--results benchmarks/results]

The floor first: the same tokenizer + ONNX Runtime text encoder + kernels.search in this
process, one query at a time (what the server adds is measured against it: `p50_vs_floor`).
Then a closed-loop load (serving/load.py: tritonclient's asyncio gRPC client) against the
local Triton server and the portable repository, at concurrency 1 to 64, for three set-ups:
dynamic batching on (the default repository), off, the gallery split over 2 shards
(2 servers, merged by the client) or over 2 local shards of one server (merged inside it), and
secured (gRPC over TLS, a viewer key checked per request, the audit trail written and
fdatasync'ed before each answer). `--setups` picks some (their order is the run's order). The model is `tiny` ESA trained for one epoch on a small
synthetic set: latency depends on its shapes, not its accuracy. The gallery holds
--gallery-size random unit embedding sets under that checkpoint's fingerprint (search cost
depends on N, not on content; the demo's gallery is 401 images). Each row carries Triton's own
statistics (`model_ms`: queue and compute steps per request, per model, of the first server). Writes
benchmarks/results/serving_cpu[_n<N> unless N is 20000][_quick].json and .png (--results: another
folder).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

# as in the served models (serving/launch.py): torch's OpenMP threads would otherwise spin
# ~200 ms after each op on the core the floor's ONNX Runtime needs; read when torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

from common import RESULTS, machine_record, percentiles_ms, pyplot, result_stem, save_plot, write_result  # noqa: E402
from tiny_runs import served_model  # noqa: E402

CAPTIONS = ["a woman in a red coat with a black handbag", "a man in a grey hoodie, dark jeans and a backpack",
            "a young man wearing a white t-shirt and blue shorts", "a woman with long hair in a green dress",
            "a person in a black jacket carrying a yellow umbrella", "a girl with a pink bag and white shoes"]


def in_process(export: Path, gallery: Path, texts: list[str], seconds: float, k: int = 10) -> dict:
    """p50/p95/p99 and q/s of tokenizer -> ONNX Runtime -> kernels.search, one query at a time."""
    import kernels
    from export.gallery import load_gallery
    from export.ort_encoders import OnnxEncoders
    from trainer.data.tokenizer import Tokenizer
    encoders = OnnxEncoders(export, threads=1)  # on 2 shared cores, faster than ORT's spinning pool
    tokenizer = Tokenizer(export / encoders.manifest["tokenizer"]["file"])
    g = load_gallery(gallery)
    sets = g.sets.float()

    def query(text):
        ids = tokenizer([text]).astype("int32")
        return kernels.search(torch.from_numpy(encoders.encode_text(ids)), sets, k, alpha=g.alpha, weight=g.weight,
                              margin=g.margin)
    for text in texts:  # warm-up
        query(text)
    latencies, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        query(texts[len(latencies) % len(texts)])
        latencies.append(time.perf_counter() - t)
    return {"setup": "in-process floor", "concurrency": 1, "queries": len(latencies),
            "qps": len(latencies) / (time.perf_counter() - start), **percentiles_ms(latencies)}


STEPS = ("queue", "compute_input", "compute_infer", "compute_output")


def model_times(url: str, connection: dict) -> dict:
    """Triton's cumulative statistics per model: {model: {"n": requests, step: ns}}; `connection`:
    the TLS arguments of a secured server (Credentials.connection())."""
    import tritonclient.grpc as grpcclient
    with grpcclient.InferenceServerClient(url, **connection) as client:
        stats = client.get_inference_statistics(as_json=True)["model_stats"]
    return {m["name"]: {"n": int(m["inference_stats"]["success"].get("count", 0)),
                        **{step: int(m["inference_stats"][step].get("ns", 0)) for step in STEPS}} for m in stats}


def ms_per_request(before: dict, after: dict) -> dict:
    """{model: {step: ms per request}} of what the models did between two model_times."""
    out = {}
    for name, now in after.items():
        n = now["n"] - before.get(name, {}).get("n", 0)
        if n:
            out[name] = {step: (now[step] - before.get(name, {}).get(step, 0)) / n / 1e6 for step in STEPS}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="concurrency 1, 8 and 32, 2 s each, models batching up to 32 (what 32 clients send)")
    parser.add_argument("--gallery-size", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON / PNG go")
    parser.add_argument("--setups", default="batching on,batching off,2 shards,2 local shards,secured",
                        help="comma-separated, run in this order (the first is the ratios' baseline)")
    args = parser.parse_args()
    from serving.client import NO_CREDENTIALS
    from serving.launch import Security, TritonServer
    from serving.load import run_load
    from serving.repository import write_repository
    from serving.shards import write_shard_repositories
    levels = (1, 8, 32) if args.quick else (1, 4, 16, 64)
    seconds = 2.0 if args.quick else args.seconds
    batch = {"max_batch_size": max(levels)} if args.quick else {}  # fewer warm-up shapes: a faster start
    rows = []
    with tempfile.TemporaryDirectory(prefix="tbps-bench-serving-") as tmp:
        work = Path(tmp)
        export, gallery, _ = served_model(work, args.gallery_size)
        floor = in_process(export, gallery, CAPTIONS, seconds)
        print(f"in-process floor: p50 {floor['p50_ms']:.2f} ms  p95 {floor['p95_ms']:.2f}  "
              f"{floor['qps']:.1f} q/s", flush=True)
        setups = {"batching on": lambda: ([write_repository(export, gallery, work / "on", **batch)], {}),
                  "batching off": lambda: ([write_repository(export, gallery, work / "off", batching=False,
                                                             **batch)], {}),
                  "2 shards": lambda: (write_shard_repositories(export, gallery, 2, work / "shards", **batch), {}),
                  "2 local shards": lambda: ([write_repository(export, gallery, work / "local", local_shards=2,
                                                               **batch)], {}),
                  "secured": lambda: ([write_repository(export, gallery, work / "secured", **batch)],
                                      secured(work / "security"))}
        for name in args.setups.split(","):
            repos, guard = setups[name]()
            with contextlib.ExitStack() as stack:
                servers = [stack.enter_context(TritonServer(r, security=guard.get("security", Security())))
                           for r in repos]
                urls = [s.grpc_url for s in servers]
                options = {"credentials": guard.get("credentials", NO_CREDENTIALS)}
                connection = options["credentials"].connection()
                run_load(urls, CAPTIONS, concurrency=4, duration=seconds / 2, **options)  # warm-up
                for concurrency in levels:
                    before = model_times(urls[0], connection)
                    report = run_load(urls, CAPTIONS, concurrency=concurrency, duration=seconds, **options)
                    row = {"setup": name, **{k: v for k, v in report.items() if k != "errors"},
                           "p50_vs_floor": report["p50_ms"] / floor["p50_ms"],
                           "model_ms": ms_per_request(before, model_times(urls[0], connection))}  # the first server's
                    rows.append(row)
                    print(f"{name:13s} c={concurrency:3d}  {row['qps']:7.1f} q/s  p50 {row['p50_ms']:7.1f} ms  "
                          f"p95 {row['p95_ms']:7.1f}  p99 {row['p99_ms']:7.1f}  failures {row['failures']}  "
                          f"p50 / floor {row['p50_vs_floor']:.2f}", flush=True)
    first = rows[0]["setup"]
    base = {r["concurrency"]: r for r in rows if r["setup"] == first}
    for r in rows:
        r["baseline"] = first
        r["qps_vs_baseline"] = r["qps"] / base[r["concurrency"]]["qps"]
        r["p50_above_baseline_ms"] = r["p50_ms"] - base[r["concurrency"]]["p50_ms"]
    size = "" if args.gallery_size == 20_000 else f"_n{args.gallery_size}"
    stem = result_stem(f"serving_cpu{size}", args.quick, args.results)
    c1 = next(r for r in rows if r["setup"] == first and r["concurrency"] == 1)
    write_result(stem, {
        "benchmark": "serving_cpu", **machine_record("machine", "processor", "cores"),
        "gallery_size": args.gallery_size, "k": 10, "model": "tiny esa", **machine_record("date"), "floor": floor,
        "served_c1_p50_above_floor_ms": c1["p50_ms"] - floor["p50_ms"], "rows": rows})
    plot(rows, floor, stem, args.gallery_size)


def secured(folder: Path) -> dict:
    """A server certificate (self-signed CA, by openssl), a viewer key and an audit folder."""
    import subprocess

    from serving.access import add_key
    from serving.client import Credentials
    from serving.launch import Security
    folder.mkdir(parents=True)
    def openssl(*a):
        subprocess.run(["openssl", *a], cwd=folder, check=True, capture_output=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=bench-ca")
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-extfile", "san.ext", "-out", "server.pem")
    key = add_key(folder / "keys.json", "bench", "viewer")
    return {"security": Security(str(folder / "server.pem"), str(folder / "server.key"), None,
                                 str(folder / "keys.json"), None, str(folder / "audit")),
            "credentials": Credentials(tls_ca=str(folder / "ca.pem"), api_key=key)}


def plot(rows: list[dict], floor: dict, stem: Path, n: int) -> None:
    fig, (lat, thr) = pyplot().subplots(1, 2, figsize=(10, 3.8))
    for setup in dict.fromkeys(r["setup"] for r in rows):
        mine = [r for r in rows if r["setup"] == setup]
        c = [r["concurrency"] for r in mine]
        line = lat.plot(c, [r["p50_ms"] for r in mine], marker="o", label=f"{setup} p50")[0]
        lat.plot(c, [r["p99_ms"] for r in mine], ls="--", color=line.get_color(), label=f"{setup} p99")
        thr.plot(c, [r["qps"] for r in mine], marker="o", label=setup)
    lat.axhline(floor["p50_ms"], color="grey", ls=":", label=f"in-process floor p50 ({floor['p50_ms']:.1f} ms)")
    thr.axhline(floor["qps"], color="grey", ls=":", label="in-process floor, one at a time")
    for ax, ylabel in ((lat, "latency (ms)"), (thr, "queries / s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.suptitle(f"person_search over gRPC, local Triton on CPU, gallery {n:,} x tiny ESA sets, top-10", fontsize=9)
    save_plot(fig, stem)


if __name__ == "__main__":
    main()
