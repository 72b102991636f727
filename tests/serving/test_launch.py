"""The local launcher's failures are specific and leave nothing running."""
import pytest

from serving.launch import ServerError, TritonServer

pytestmark = pytest.mark.slow


def test_missing_repository(tmp_path):
    with pytest.raises(ServerError, match="does not exist"):
        TritonServer(tmp_path / "nowhere")


def test_a_model_that_fails_to_load_stops_the_start_with_its_log(tmp_path):
    model = tmp_path / "repo" / "broken"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: 0\n'
                                        'input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
                                        'output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n')
    (model / "1" / "model.py").write_text("raise RuntimeError('this model cannot load')\n")
    server = TritonServer(tmp_path / "repo")
    with pytest.raises(ServerError, match="(?s)exited with code.*this model cannot load"):
        server.start()
    assert server.process.poll() is not None


class _ReusingSocket:
    """A socket of an OS that hands out the lowest port no open socket holds: one freed a moment
    ago comes straight back (how a CI run once gave gRPC and metrics the same port)."""
    held: set = set()

    def __init__(self):
        self.port = None

    def bind(self, address):
        self.port = min(set(range(40000, 40010)) - self.held)
        self.held.add(self.port)

    def getsockname(self):
        return ("127.0.0.1", self.port)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.held.discard(self.port)


def test_the_servers_ports_are_distinct_even_where_the_os_reuses_a_freed_one(tmp_path, monkeypatch):
    import serving.launch
    monkeypatch.setattr(serving.launch.socket, "socket", _ReusingSocket)
    (tmp_path / "repo").mkdir()
    server = TritonServer(tmp_path / "repo")
    assert len({server.grpc_port, server.http_port, server.metrics_port}) == 3
    assert TritonServer(tmp_path / "repo", grpc_port=8001).grpc_port == 8001


PARENT = """
import sys
from serving.launch import TritonServer
server = TritonServer(sys.argv[1]).start()
print(server.process.pid, flush=True)
sys.stdin.read()  # until killed
"""


def test_a_server_does_not_outlive_a_parent_killed_with_sigkill(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    (tmp_path / "repo").mkdir()
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "repo")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    server = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)  # no finally, no atexit: what a killed pytest or demo does
    parent.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:  # gone, or a zombie nobody reaped (it exited)
            if Path(f"/proc/{server}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return
        except FileNotFoundError:
            return
        time.sleep(0.2)
    os.kill(server, signal.SIGKILL)
    pytest.fail(f"tritonserver {server} still ran 30 s after its parent was killed")
