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
