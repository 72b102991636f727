"""The search page's own timing, from Enter to the grid drawn, next to the served search alone.

    .venv/bin/python benchmarks/bench_ui.py [--quick] [--gallery-size 20000] [--queries 20]

A tiny ESA model trained for one epoch on a small synthetic set; a gallery of --gallery-size
random unit embedding sets under its fingerprint (search cost depends on N, not on content),
each item an image file of its own (copies of the synthetic crops: every hit has a thumbnail to
make); the local Triton server on the portable repository; the page (serving/ui.py) in Debian's
headless Chromium, driven by Playwright. Per k, over the unseen people's captions, one at a time:
  served search  AsyncSearchClient.search, the call the page's server makes;
  API            GET /api/search over HTTP: the page's server added;
  page, new      Enter to grid drawn (app.js's performance.now(), window.tbpsTiming), with no
                 thumbnail made yet and the browser's cache off;
  page, made     the same query again, its thumbnails made, the browser's cache still off;
  page, again    the same query again: its thumbnails already made, the browser's cache on.
Writes benchmarks/results/ui_cpu[_n<N> unless N is 20000][_quick].json and .png.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from common import grouped_bars, machine_record, percentiles_ms, pyplot, result_stem, save_plot, write_result
from tiny_runs import served_model

SERIES = {"served search": "AsyncSearchClient.search", "API": "GET /api/search",
          "page, new": "Enter to grid drawn, no thumbnail made yet, browser cache off",
          "page, made": "Enter to grid drawn, the same query again (thumbnails made, browser cache off)",
          "page, again": "Enter to grid drawn, the same query again (thumbnails made, browser cache on)"}
PAGE_RUNS = (("page, new", False), ("page, made", False), ("page, again", True))  # (series, browser cache)


def build(work: Path, gallery_size: int) -> tuple[Path, Path, Path, list[str]]:
    """(ONNX export, gallery file, its image root, the test split's captions) of a fresh tiny ESA
    run (tiny_runs.served_model), the gallery's images being the synthetic crops over again."""
    from trainer.data.formats import load_dataset
    root, paths = work / "images", [f"{i // 1000:03d}/{i:06d}.jpg" for i in range(gallery_size)]
    export, gallery, data = served_model(work, gallery_size, (128, 48), paths, str(root))  # the page shows full-size crops
    crops = [p.read_bytes() for p in sorted((data / "imgs").rglob("*.jpg"))]
    for i, path in enumerate(paths):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(crops[i % len(crops)])
    return export, gallery, root, [c for e in load_dataset(data).test for c in e.captions]


async def served(urls: list[str], texts: list[str], k: int) -> list[float]:
    from serving.client import AsyncSearchClient
    async with AsyncSearchClient(urls) as client:
        await client.search(texts[:1], k)  # warm-up: the model config, the channel
        seconds = []
        for text in texts:
            start = time.perf_counter()
            await client.search([text], k)
            seconds.append(time.perf_counter() - start)
    return seconds


def api(base: str, texts: list[str], k: int) -> list[float]:
    seconds = []
    for text in texts:
        start = time.perf_counter()
        with urllib.request.urlopen(f"{base}/api/search?" + urllib.parse.urlencode({"text": text, "k": k})) as r:
            r.read()
        seconds.append(time.perf_counter() - start)
    return seconds


class Page:
    """The page in headless Chromium; `search` types, presses Enter and returns the page's timing."""

    def __init__(self, playwright, base: str):
        from serving.report import find_chromium
        chromium = find_chromium()
        if chromium is None:
            raise FileNotFoundError("no chromium on PATH (Debian: apt-get install chromium)")
        self.browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"], headless=True)
        self.page = self.browser.new_page(viewport={"width": 1280, "height": 900})
        self.cdp = self.page.context.new_cdp_session(self.page)
        self.page.goto(base)
        self.page.wait_for_selector("body[data-ready]", state="attached")  # the URL read: typing is safe
        self.searches = 0

    def search(self, text: str, k: int, browser_cache: bool) -> dict:
        self.cdp.send("Network.setCacheDisabled", {"cacheDisabled": not browser_cache})
        self.page.fill("#q", text)
        self.page.fill("#k", str(k))
        self.page.press("#q", "Enter")
        self.searches += 1
        # a selector, not wait_for_function: the page's Content-Security-Policy forbids eval
        self.page.wait_for_selector(f'body[data-searches="{self.searches}"]', state="attached")
        timing = self.page.evaluate("window.tbpsTiming")
        if timing["error"] or timing["hits"] != k:
            raise RuntimeError(f"the page answered {timing}")
        return timing


def summary(seconds: list[float]) -> dict:
    return {"queries": len(seconds), "mean_ms": statistics.fmean(seconds) * 1e3, **percentiles_ms(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 queries, k = 10 only")
    parser.add_argument("--gallery-size", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=20, help="captions timed per k and series")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from serving.launch import TritonServer
    from serving.repository import write_repository
    from serving.ui import running_ui
    ks = (10,) if args.quick else (10, 50)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tbps-bench-ui-") as tmp:
        work = Path(tmp)
        export, gallery, root, captions = build(work, args.gallery_size)
        texts = captions[:5 if args.quick else args.queries]
        thumbs = work / "thumbnails"
        with TritonServer(write_repository(export, gallery, work / "repo")) as server, \
                running_ui(server.grpc_url, root, cache=thumbs) as base:
            api(base, captions[-1:], ks[0])  # warm-up: the page's server and its client
            # before Playwright: its sync API holds this thread's event loop
            times = {k: {"served search": asyncio.run(served([server.grpc_url], texts, k)),
                         "API": api(base, texts, k), **{name: [] for name, _ in PAGE_RUNS}} for k in ks}
            answered = {k: {name: [] for name, _ in PAGE_RUNS} for k in ks}
            with sync_playwright() as playwright:
                page = Page(playwright, base)
                page.search(captions[-1], ks[0], browser_cache=True)  # warm-up: the page's script
                for k in ks:
                    for text in texts:
                        shutil.rmtree(thumbs, ignore_errors=True)
                        for name, cached in PAGE_RUNS:
                            timing = page.search(text, k, browser_cache=cached)
                            times[k][name].append(timing["drawn_ms"] / 1e3)
                            answered[k][name].append(timing["answered_ms"] / 1e3)
                chromium = page.browser.version
                page.browser.close()
    for k in ks:
        for name in SERIES:
            row = {"k": k, "series": name, **summary(times[k][name])}
            if name in answered[k]:
                row["answered_p50_ms"] = percentiles_ms(answered[k][name], (50,))["p50_ms"]
            rows.append(row)
            print(f"k={k:3d}  {name:14s} p50 {row['p50_ms']:7.1f} ms  p95 {row['p95_ms']:7.1f}"
                  + (f"  (API answered at p50 {row['answered_p50_ms']:.1f})" if name in answered[k] else ""))
    size = "" if args.gallery_size == 20_000 else f"_n{args.gallery_size}"
    stem = result_stem(f"ui_cpu{size}", args.quick)
    write_result(stem, {"benchmark": "ui_cpu", **machine_record("machine", "processor", "cores", "date"),
                        "chromium": chromium, "gallery_size": args.gallery_size, "model": "tiny esa",
                        "series": SERIES,
                        "rows": rows})
    plot(rows, stem, args.gallery_size)


def plot(rows: list[dict], stem: Path, n: int) -> None:
    ks = sorted({r["k"] for r in rows})
    p50 = {name: [next(r["p50_ms"] for r in rows if r["k"] == k and r["series"] == name) for k in ks]
           for name in SERIES}
    spread = {name: [[0] * len(ks), [next(r["p95_ms"] - r["p50_ms"] for r in rows
                                          if r["k"] == k and r["series"] == name) for k in ks]] for name in SERIES}
    fig, ax = pyplot().subplots(figsize=(7, 3.8))
    grouped_bars(ax, [f"top {k}" for k in ks], p50, errors=spread)
    ax.set_ylabel("ms (bar: p50, whisker: p95)")
    ax.legend(fontsize=8)
    ax.set_title(f"search page, Enter to grid drawn vs the served search alone\n"
                 f"gallery {n:,} x tiny ESA sets, local Triton on CPU, headless Chromium", fontsize=9)
    save_plot(fig, stem)


if __name__ == "__main__":
    main()
