"""`tbps` as a user runs it: the whole line composed, and the demo end to end."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from serving.launch import free_port
from tests.conftest import REPO, run_command


def tbps(*args, check=True):
    return run_command("serving.cli", *args, check=check)


def _get(url: str, wait_s: float = 30.0) -> bytes:
    """GET, retrying while the page's server is still binding (it says its URL just before)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return urllib.request.urlopen(url, timeout=30).read()
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_tbps_lists_every_stage_command():
    usage = tbps("--help").stdout
    commands = "synth,train,eval,import,export,gallery,trt,ann,repo,serve,search,ingest,delete,compact,keys,accounts,audit,ui,report,demo"
    assert "{" + commands + "}" in usage, usage
    assert "strongly typed" in tbps("trt", "--help").stdout  # the wrapped script's own description


def test_demo_runs_every_stage_then_reuses_them(tmp_path):
    work = tmp_path / "demo"
    first = tbps("demo", "--workdir", work, "--ids", 8, "--epochs", 1)
    for stage in ("1/6 synthesize", "2/6 train", "3/6 export", "4/6 encode the gallery", "5/6 start a local Triton",
                  "6/6 16 held-out captions over gRPC", "text-to-image: R1", "example queries"):
        assert stage in first.stdout, stage
    assert (work / "run" / "best" / "model.safetensors").is_file()
    assert "results page:" in first.stdout and "<img" in (work / "report.html").read_text()
    assert "tbps demo --ui" in first.stdout  # how to get the search page
    # again, with the page: everything reused, the same rankings, then the server stays up with the page
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serving.cli", "demo", "--workdir", str(work), "--ids", "8",
                             "--epochs", "1", "--ui", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        lines = []
        while not lines or "search page: http" not in lines[-1]:
            lines.append(proc.stdout.readline())
            assert lines[-1], "".join(lines[-30:])
        api = json.loads(_get(f"http://127.0.0.1:{port}/api/search?text=a+man&k=3"))
        assert [h["rank"] for h in api[0]["hits"]] == [1, 2, 3]
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # a failed check: Ctrl-C first, so the demo stops its Triton server too
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    again = "".join(lines) + rest
    assert proc.returncode == 0 and "stopped the search page and the server" in again, again[-2000:]
    for reused in ("reusing the existing dataset", "nothing to train", "reusing the export", "reusing the gallery"):
        assert reused in again, reused
    # the same rankings from the rebuilt server
    assert first.stdout.split("text-to-image:")[1].split("done in")[0] == \
        again.split("text-to-image:")[1].split("done in")[0]
