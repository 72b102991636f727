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
