"""A closed-loop load generator on tritonclient's asyncio gRPC client: `concurrency` clients
each send one query, wait for its answer, send the next, for `duration` seconds."""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import time

import numpy as np

from serving.client import NO_CREDENTIALS, AsyncSearchClient, Credentials


async def _client(client: AsyncSearchClient, texts, k: int, deadline: float, latencies: list, failures: list,
                  offset: int) -> None:
    for text in itertools.islice(itertools.cycle(texts), offset, None):
        if time.monotonic() >= deadline:
            return
        start = time.perf_counter()
        try:
            await client.search(text, k=k)
            latencies.append(time.perf_counter() - start)
        except Exception as e:  # counted, not raised: a load test reports every failure
            failures.append(repr(e))


def run_load(urls: str | list[str], texts: list[str], concurrency: int = 32, duration: float = 30.0,
             k: int = 10, credentials: Credentials = NO_CREDENTIALS) -> dict:
    """{"queries", "failures", "qps", "p50_ms", "p95_ms", "p99_ms", "errors" (first 5)}. Every
    client connects (its TLS handshake included) and asks once before the clock starts: the
    figures are the steady state's."""
    latencies: list[float] = []
    failures: list[str] = []
    elapsed = 0.0

    async def main():
        nonlocal elapsed
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(AsyncSearchClient(urls, credentials=credentials))
                       for _ in range(concurrency)]
            for e in await asyncio.gather(*(c.search(texts[0], k=k) for c in clients), return_exceptions=True):
                if isinstance(e, BaseException):
                    failures.append(repr(e))
            start = time.perf_counter()
            deadline = time.monotonic() + duration
            await asyncio.gather(*(_client(c, texts, k, deadline, latencies, failures, i)
                                   for i, c in enumerate(clients)))
            elapsed = time.perf_counter() - start
    asyncio.run(main())
    ms = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    return {"concurrency": concurrency, "seconds": elapsed, "queries": len(latencies), "failures": len(failures),
            "qps": len(latencies) / elapsed, "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)), "errors": failures[:5]}
