"""End-to-end serving latency: text over gRPC -> tokenizer -> text encoder -> gallery search.

    .venv/bin/python benchmarks/bench_serving.py [--quick] [--gallery-size 20000] [--results benchmarks/results]
        [--setups "batching on,secured"] [--clients 1,64] [--rounds 8] [--paired] [--tag NAME]

The floor first: the same tokenizer + ONNX Runtime text encoder + kernels.search in this
process, one query at a time (what the server adds is measured against it: `p50_vs_floor`).
Then a closed-loop load (serving/load.py: tritonclient's asyncio gRPC client) against the
local Triton server and the portable repository, at concurrency 1 to 64, for set-ups: dynamic
batching on (the default repository), off, the gallery split over 2 shards (2 servers, merged
by the client) or over 2 local shards of one server (merged inside it), and secured (gRPC over
TLS, a viewer key checked per request, the audit trail written and fdatasync'ed before each
answer; "secured 5 ms sync": the audit trail's weaker mode, in the page cache before each answer
and fdatasync'ed within 5 ms), or one part of it (TLS only, keys only, audit only). `--setups` picks some; the first
is the baseline. Every set-up's servers run at once; `--rounds R` measures each set-up R times,
alternating (ABBA: A B, B A, ...), each level's set-ups next to each other in time, so that on a
shared machine a drift of its load hits them alike: `summary` gives per set-up and level the
median, min and max over rounds, and of each round's difference from the baseline. `--paired`:
one client's latency by pairs instead (the only way this 2-core VM resolves a fraction of a
millisecond: its p50 moves 1-3 ms between windows): it asks every set-up each query in turn, in
a new random order per query, for --seconds x --rounds, so that each set-up's i-th query meets
the machine as the others' did; the difference of p50s comes with a 95% bootstrap interval over
queries. Each row also has the server's CPU time per query (its processes and the models', from
/proc: what decides throughput where the server has its cores to itself; the clients run on the
same 2 cores here and pay for their own TLS). The model
is `tiny` ESA trained for one epoch on a small synthetic set: latency depends on its shapes,
not its accuracy. The gallery holds --gallery-size random unit embedding sets under that
checkpoint's fingerprint (search cost depends on N, not on content; the demo's gallery is 401
images). Each row carries Triton's own statistics (`model_ms`: queue and compute steps per
request, per model, of the set-up's first server). Writes
benchmarks/results/serving_cpu[_n<N> unless N is 20000][_<tag>][_quick].json and .png, and with
several set-ups _cost.png: each against the baseline (--results: another folder).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
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


def server_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants (the models' stubs), from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                parents.setdefault(int(fields[1]), []).append((int(entry), int(fields[11]) + int(fields[12])))
    ticks, todo = 0, [pid]
    with contextlib.suppress(OSError):
        ticks = sum(map(int, Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13]))
    while todo:
        for child, used in parents.get(todo.pop(), []):
            ticks, todo = ticks + used, todo + [child]
    return ticks / os.sysconf("SC_CLK_TCK")


def paired(running: dict, texts: list[str], seconds: float) -> dict[str, list[float]]:
    """{set-up: latencies (s)} of one client asking every set-up each query, in a new random order
    per query (seeded), for `seconds`."""
    from serving.client import AsyncSearchClient

    async def ask():
        async with contextlib.AsyncExitStack() as stack:
            clients = {name: await stack.enter_async_context(AsyncSearchClient(urls, **options))
                       for name, (urls, options, _) in running.items()}
            for client in clients.values():  # connected, TLS handshakes done, before the clock
                await client.search(texts[0], k=10)
            latencies, order, rng, n = {name: [] for name in clients}, list(clients), random.Random(0), 0
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                rng.shuffle(order)
                for name in order:
                    start = time.perf_counter()
                    await clients[name].search(texts[n % len(texts)], k=10)
                    latencies[name].append(time.perf_counter() - start)
                n += 1
            return latencies
    return asyncio.run(ask())


def paired_rows(latencies: dict[str, list[float]], cpu_s: dict[str, float], baseline: str) -> list[dict]:
    """A row per set-up: p50, p99 and, against the baseline, the difference of p50s with a 95%
    interval from 1,000 bootstrap resamples of the query pairs."""
    import numpy as np
    base, rng, rows = np.array(latencies[baseline]) * 1e3, np.random.default_rng(0), []
    for name, seconds in latencies.items():
        ms = np.array(seconds) * 1e3
        picks = rng.integers(0, len(ms), (1000, len(ms)))
        resampled = np.median(ms[picks], axis=1) - np.median(base[picks], axis=1)
        rows.append({"setup": name, "round": 0, "concurrency": 1, "paired": True, "queries": len(ms),
                     "failures": 0, "qps": len(ms) / ms.sum() * 1e3, "p50_ms": float(np.median(ms)),
                     "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)),
                     "p50_above_baseline_ci95_ms": [float(np.percentile(resampled, q)) for q in (2.5, 97.5)],
                     "server_cpu_ms": cpu_s[name] / len(ms) * 1e3, "load_1min": os.getloadavg()[0]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="concurrency 1, 8 and 32, 2 s each, models batching up to 32 (what 32 clients send)")
    parser.add_argument("--gallery-size", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON / PNG go")
    parser.add_argument("--setups", default="batching on,batching off,2 shards,2 local shards,secured",
                        help=f"comma-separated, of: {', '.join(SETUPS)} (the first is the baseline)")
    parser.add_argument("--clients", help="comma-separated concurrency levels (default 1,4,16,64; --quick: 1,8,32)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every set-up this many times, alternating (ABBA): medians and spread over rounds")
    parser.add_argument("--paired", action="store_true",
                        help="one client's latency by pairs: every set-up asked each query in turn (see above)")
    parser.add_argument("--tag", default="", help="appended to the results' name (serving_cpu_n401_<tag>)")
    args = parser.parse_args()
    started = machine_record("date", "started_utc")
    from serving.client import NO_CREDENTIALS
    from serving.launch import Security, TritonServer
    from serving.load import run_load
    names = args.setups.split(",")
    if unknown := [n for n in names if n not in SETUPS]:
        parser.error(f"unknown set-up(s) {unknown}; known: {', '.join(SETUPS)}")
    levels = tuple(int(c) for c in args.clients.split(",")) if args.clients else (1, 8, 32) if args.quick \
        else (1, 4, 16, 64)
    if args.paired and 1 not in levels:
        parser.error("--paired measures one client: --clients must include 1")
    seconds = 2.0 if args.quick else args.seconds
    batch = {"max_batch_size": max(levels)} if args.quick else {}  # fewer warm-up shapes: a faster start
    rows = []
    with tempfile.TemporaryDirectory(prefix="tbps-bench-serving-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        export, gallery, _ = served_model(work, args.gallery_size)
        floor = in_process(export, gallery, CAPTIONS, seconds)
        print(f"in-process floor: p50 {floor['p50_ms']:.2f} ms  p95 {floor['p95_ms']:.2f}  "
              f"{floor['qps']:.1f} q/s", flush=True)
        running = {}  # every set-up's servers up at once, so that rounds alternate without restarts
        for name in names:
            repos, guard = SETUPS[name](export, gallery, work / f"setup{len(running)}", batch)
            servers = [stack.enter_context(TritonServer(r, security=guard.get("security", Security())))
                       for r in repos]
            urls = [s.grpc_url for s in servers]
            options = {"credentials": guard.get("credentials", NO_CREDENTIALS)}
            run_load(urls, CAPTIONS, concurrency=4, duration=seconds / 2, **options)  # warm-up
            running[name] = urls, options, [s.process.pid for s in servers]

        def cpu_s(name):
            return sum(server_cpu_s(pid) for pid in running[name][2])
        if args.paired:
            before = {name: cpu_s(name) for name in names}
            latencies = paired(running, CAPTIONS, seconds * args.rounds)
            rows += paired_rows(latencies, {name: cpu_s(name) - before[name] for name in names}, names[0])
            for row in rows:
                low, high = row["p50_above_baseline_ci95_ms"]
                print(f"paired {row['setup']:17s} c=  1  {row['queries']} queries  p50 {row['p50_ms']:6.2f} ms  "
                      f"p99 {row['p99_ms']:6.2f}  vs {names[0]}: {row['p50_ms'] - rows[0]['p50_ms']:+.3f} ms "
                      f"(95% {low:+.3f} to {high:+.3f})  server CPU {row['server_cpu_ms']:.2f} ms/query", flush=True)
        for round_ in range(args.rounds):
            for concurrency in levels:  # each level's set-ups side by side in time; ABBA cancels a drift
                if args.paired and concurrency == 1:
                    continue
                for name in names if round_ % 2 == 0 else names[::-1]:
                    urls, options, _ = running[name]
                    connection = options["credentials"].connection()
                    before, used = model_times(urls[0], connection), cpu_s(name)
                    report = run_load(urls, CAPTIONS, concurrency=concurrency, duration=seconds, **options)
                    used = cpu_s(name) - used
                    row = {"setup": name, "round": round_, "load_1min": os.getloadavg()[0],
                           **{k: v for k, v in report.items() if k != "errors"},
                           "p50_vs_floor": report["p50_ms"] / floor["p50_ms"],
                           "server_cpu_ms": used / max(report["queries"], 1) * 1e3,
                           "model_ms": ms_per_request(before, model_times(urls[0], connection))}  # the first server's
                    rows.append(row)
                    print(f"r{round_} {name:17s} c={concurrency:3d}  {row['qps']:7.1f} q/s  "
                          f"p50 {row['p50_ms']:7.1f} ms  p95 {row['p95_ms']:7.1f}  p99 {row['p99_ms']:7.1f}  "
                          f"failures {row['failures']}  p50 / floor {row['p50_vs_floor']:.2f}  "
                          f"server CPU {row['server_cpu_ms']:.2f} ms/query", flush=True)
    base = {(r["round"], r["concurrency"]): r for r in rows if r["setup"] == names[0]}
    for r in rows:  # against the baseline of the same round: paired, so a drift between rounds cancels
        r["baseline"] = names[0]
        r["qps_vs_baseline"] = r["qps"] / base[r["round"], r["concurrency"]]["qps"]
        r["p50_above_baseline_ms"] = r["p50_ms"] - base[r["round"], r["concurrency"]]["p50_ms"]
        r["server_cpu_vs_baseline"] = r["server_cpu_ms"] / base[r["round"], r["concurrency"]]["server_cpu_ms"]
    summary = summarize(rows)
    for m in summary:  # median (min-max) over rounds
        print(f"{m['setup']:17s} c={m['concurrency']:3d}  p50 {m['p50_ms']['median']:6.2f} ms "
              f"({m['p50_ms']['min']:.2f}-{m['p50_ms']['max']:.2f})  {m['qps']['median']:7.1f} q/s  vs {names[0]}: "
              f"p50 {m['p50_above_baseline_ms']['median']:+.2f} ms ({m['p50_above_baseline_ms']['min']:+.2f} to "
              f"{m['p50_above_baseline_ms']['max']:+.2f}), q/s x{m['qps_vs_baseline']['median']:.3f} "
              f"({m['qps_vs_baseline']['min']:.3f}-{m['qps_vs_baseline']['max']:.3f}), server CPU a query "
              f"x{m['server_cpu_vs_baseline']['median']:.3f} ({m['server_cpu_vs_baseline']['min']:.3f}-"
              f"{m['server_cpu_vs_baseline']['max']:.3f})")
    size = "" if args.gallery_size == 20_000 else f"_n{args.gallery_size}"
    stem = result_stem(f"serving_cpu{size}{'_' + args.tag if args.tag else ''}", args.quick, args.results)
    c1 = next(m for m in summary if m["setup"] == names[0] and m["concurrency"] == min(levels))
    write_result(stem, {
        "benchmark": "serving_cpu", **machine_record("machine", "processor", "cores"),
        "gallery_size": args.gallery_size, "k": 10, "model": "tiny esa", **started,
        "load_average": os.getloadavg(), "rounds": args.rounds, "seconds": seconds, "floor": floor,
        "served_c1_p50_above_floor_ms": c1["p50_ms"]["median"] - floor["p50_ms"], "summary": summary, "rows": rows})
    plot(summary, floor, stem, args.gallery_size)
    if len(names) > 1:
        plot_cost(summary, Path(f"{stem}_cost"), names[0], min(levels), max(levels))


def summarize(rows: list[dict]) -> list[dict]:
    """Per set-up and concurrency: the median, min and max over rounds of latency, throughput,
    server CPU and the paired differences from the baseline (and a --paired level's interval)."""
    keys = ("p50_ms", "p99_ms", "qps", "p50_above_baseline_ms", "qps_vs_baseline", "server_cpu_ms",
            "server_cpu_vs_baseline")
    groups = {}
    for r in rows:
        groups.setdefault((r["setup"], r["concurrency"]), []).append(r)
    return [{"setup": setup, "concurrency": c, "rounds": len(mine),
             **{k: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                for k in keys for v in [[r[k] for r in mine]]},
             **{k: mine[0][k] for k in ("paired", "queries", "p50_above_baseline_ci95_ms") if mine[0].get("paired")}}
            for (setup, c), mine in groups.items()]


def plot_cost(summary: list[dict], stem: Path, baseline: str, low: int, high: int) -> None:
    """Each set-up against the baseline: p50 added at the lowest concurrency (the bar: a --paired
    level's 95% interval, else the rounds' min to max) and q/s and server CPU a query at the highest."""
    others = [s for s in summary if s["setup"] != baseline]
    fig, (lat, thr) = pyplot().subplots(1, 2, figsize=(10, 3.6))
    mine = [s for s in others if s["concurrency"] == low]
    added = [s["p50_above_baseline_ms"]["median"] for s in mine]
    spans = [s.get("p50_above_baseline_ci95_ms") or (s["p50_above_baseline_ms"]["min"], s["p50_above_baseline_ms"]["max"])
             for s in mine]
    lat.barh([s["setup"] for s in mine], added, xerr=[[a - lo for a, (lo, _) in zip(added, spans)],
                                                      [hi - a for a, (_, hi) in zip(added, spans)]], capsize=3)
    lat.axvline(0, color="grey", lw=0.8)
    lat.set_xlabel(f"p50 over {baseline}, {low} client{'s' if low > 1 else ''} (ms)\n"
                   f"{'(95% interval)' if mine and mine[0].get('paired') else '(rounds min-max)'}")
    lat.invert_yaxis()
    mine = [s for s in others if s["concurrency"] == high]
    y = list(range(len(mine)))
    for offset, key, label in ((-0.2, "qps_vs_baseline", "queries / s"), (0.2, "server_cpu_vs_baseline",
                                                                          "server CPU a query")):
        values = [s[key]["median"] for s in mine]
        thr.barh([i + offset for i in y], values, height=0.4, label=label,
                 xerr=[[v - s[key]["min"] for v, s in zip(values, mine)], [s[key]["max"] - v for v, s in zip(values, mine)]],
                 capsize=3)
    thr.set_yticks(y, [s["setup"] for s in mine])
    thr.axvline(1, color="grey", lw=0.8)
    thr.set_xlabel(f"x {baseline}, {high} clients\n(median of rounds, min-max)")
    thr.invert_yaxis()
    thr.legend(fontsize=7)
    fig.suptitle("what each set-up costs against the baseline, same run", fontsize=9)
    save_plot(fig, stem)


def secured(folder: Path, tls: bool = True, keys: bool = True, audit: bool = True, sync_ms: float = 0) -> dict:
    """The parts asked for: a server certificate (self-signed CA, by openssl), a viewer key, an
    audit folder (sync_ms: its weaker mode, serving/audit.py)."""
    import subprocess

    from serving.access import add_key
    from serving.client import Credentials
    from serving.launch import Security
    folder.mkdir(parents=True)
    def openssl(*a):
        subprocess.run(["openssl", *a], cwd=folder, check=True, capture_output=True)
    if tls:
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                "-subj", "/CN=bench-ca")
        openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
                "-subj", "/CN=127.0.0.1")
        (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
    key = add_key(folder / "keys.json", "bench", "viewer") if keys else None
    tls_files = (str(folder / "server.pem"), str(folder / "server.key")) if tls else (None, None)
    return {"security": Security(*tls_files, None, str(folder / "keys.json") if keys else None, None,
                                 str(folder / "audit") if audit else None, sync_ms),
            "credentials": Credentials(tls_ca=str(folder / "ca.pem") if tls else None, api_key=key)}


def _secured(**parts):
    """A set-up: the default repository behind the security `parts` (secured's arguments)."""
    from serving.repository import write_repository
    return lambda export, gallery, work, batch: ([write_repository(export, gallery, work / "repo", **batch)],
                                                 secured(work / "security", **parts))


def _plain(**options):
    from serving.repository import write_repository
    return lambda export, gallery, work, batch: ([write_repository(export, gallery, work, **options, **batch)], {})


def _shards(export, gallery, work, batch):
    from serving.shards import write_shard_repositories
    return write_shard_repositories(export, gallery, 2, work, **batch), {}


# name -> (export, gallery, work folder, repository options) -> (repositories, {security, credentials})
SETUPS = {"batching on": _plain(), "batching off": _plain(batching=False), "2 shards": _shards,
          "2 local shards": _plain(local_shards=2), "secured": _secured(), "secured 5 ms sync": _secured(sync_ms=5),
          "TLS only": _secured(keys=False, audit=False), "keys only": _secured(tls=False, audit=False),
          "audit only": _secured(tls=False, keys=False)}


def plot(summary: list[dict], floor: dict, stem: Path, n: int) -> None:
    """Medians over rounds; the bars span the rounds' min to max."""
    fig, (lat, thr) = pyplot().subplots(1, 2, figsize=(10, 3.8))
    for setup in dict.fromkeys(s["setup"] for s in summary):
        mine = [s for s in summary if s["setup"] == setup]
        c = [s["concurrency"] for s in mine]

        def bars(key):
            return dict(yerr=[[s[key]["median"] - s[key]["min"] for s in mine],
                              [s[key]["max"] - s[key]["median"] for s in mine]], capsize=2)
        line = lat.errorbar(c, [s["p50_ms"]["median"] for s in mine], marker="o", label=f"{setup} p50",
                            **bars("p50_ms"))[0]
        lat.plot(c, [s["p99_ms"]["median"] for s in mine], ls="--", color=line.get_color(), label=f"{setup} p99")
        thr.errorbar(c, [s["qps"]["median"] for s in mine], marker="o", label=setup, **bars("qps"))
    lat.axhline(floor["p50_ms"], color="grey", ls=":", label=f"in-process floor p50 ({floor['p50_ms']:.1f} ms)")
    thr.axhline(floor["qps"], color="grey", ls=":", label="in-process floor, one at a time")
    for ax, ylabel in ((lat, "latency (ms)"), (thr, "queries / s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    rounds = summary[0]["rounds"]
    fig.suptitle(f"person_search over gRPC, local Triton on CPU, gallery {n:,} x tiny ESA sets, top-10"
                 f"{f', medians of {rounds} alternating rounds' if rounds > 1 else ''}", fontsize=9)
    save_plot(fig, stem)


if __name__ == "__main__":
    main()
