"""bench_serving's own arithmetic: the paired latency difference and its interval, and the
server's CPU time read from /proc."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bench_serving import paired_rows, server_cpu_s


def test_the_paired_difference_finds_a_shift_under_noise_that_moves_both_alike():
    """Each query meets the machine as its pair did: a drift of several ms that both set-ups see
    cancels, and a 0.3 ms cost stands out with an interval that excludes 0 and holds 0.3."""
    rng = np.random.default_rng(1)
    machine = 5e-3 + 3e-3 * rng.random(2000)  # the VM's state, 5-8 ms, shared by both of a pair
    latencies = {"plain": list(machine + rng.normal(0, 1e-4, 2000)),
                 "secured": list(machine + 3e-4 + rng.normal(0, 1e-4, 2000))}
    plain, secured = paired_rows(latencies, {"plain": 2.0, "secured": 2.2}, "plain")
    assert plain["p50_above_baseline_ci95_ms"] == [0.0, 0.0] and plain["queries"] == 2000
    low, high = secured["p50_above_baseline_ci95_ms"]
    assert 0.1 < low < 0.3 < high < 0.5
    assert secured["server_cpu_ms"] == pytest.approx(1.1) and secured["p50_ms"] > plain["p50_ms"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc (Linux)")
def test_server_cpu_counts_a_process_and_its_children():
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\ntime.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, "
                                                     f"'-c', {busy!r}])"], start_new_session=True)
    try:
        time.sleep(2.5)
        assert 0.5 < server_cpu_s(parent.pid) < 2.0  # the child's busy 0.6 s, and both interpreters' start
        assert server_cpu_s(2 ** 22 + 7) == 0.0  # gone: nothing
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()
