"""A bounded load test against the real server: no failed query, no unbounded memory growth."""
import pytest

from serving.load import run_load

pytestmark = pytest.mark.slow
MEMORY_GROWTH_BOUND = 64 << 20  # server + model processes, after a warm-up run of the same load


def test_32_concurrent_clients_for_10_seconds(server, captions):
    run_load(server.grpc_url, captions, concurrency=32, duration=3.0)  # warm-up: allocator pools fill
    before = server.memory_bytes()
    report = run_load(server.grpc_url, captions, concurrency=32, duration=10.0)
    growth = server.memory_bytes() - before
    assert report["failures"] == 0, report["errors"]
    assert report["queries"] > 32
    assert growth < MEMORY_GROWTH_BOUND, f"server memory grew by {growth / 2**20:.0f} MiB under load"
    assert server.process.poll() is None
