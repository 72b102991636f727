"""tbps export / gallery / repo / serve / search against the real server: the commands the README shows."""
import json
import subprocess
import sys

import pytest

from tests.conftest import run_command

pytestmark = pytest.mark.slow


def tbps(*args):
    return run_command("serving.cli", *args, check=False)


def test_search_prints_ranked_hits_as_json(server):
    out = tbps("search", "a woman in a red coat", "a man with a backpack", "-k", 3, "--url", server.grpc_url, "--json")
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    assert [r["text"] for r in results] == ["a woman in a red coat", "a man with a backpack"]
    assert [h["rank"] for h in results[0]["hits"]] == [1, 2, 3]
    assert results[0]["hits"][0]["score"] >= results[0]["hits"][2]["score"]


def test_search_table_and_a_refused_query(server):
    out = tbps("search", "a woman in a red coat", "-k", 2, "--url", server.grpc_url)
    assert out.returncode == 0 and "rank" in out.stdout and len(out.stdout.splitlines()) == 4
    bad = tbps("search", "   ", "--url", server.grpc_url)
    assert bad.returncode == 2 and "text 0 is empty" in bad.stderr and "Traceback" not in bad.stderr


def test_repo_writes_shards_and_refuses_a_used_folder(esa_export, gallery, tmp_path):
    out = tbps("repo", esa_export, gallery, "--out", tmp_path / "repos", "--shards", 2)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "repos").iterdir()) == ["galleries", "shard0", "shard1"]
    again = tbps("repo", esa_export, gallery, "--out", tmp_path / "repos" / "shard0")
    assert again.returncode == 2 and "is not empty" in again.stderr


def test_serve_runs_until_interrupted_and_stops_cleanly(repository):
    import signal
    import time

    from serving.client import SearchClient
    from serving.launch import free_port
    import urllib.request
    port, metrics = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serving.cli", "serve", str(repository), "--grpc-port", str(port),
                             "--metrics-port", str(metrics)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Triton is ready" in line or not line:
                break
        assert f"gRPC 127.0.0.1:{port}" in lines[-1], "".join(lines[-20:])
        assert f"metrics http://127.0.0.1:{metrics}/metrics" in lines[-1]
        with SearchClient(f"127.0.0.1:{port}") as client:
            assert len(client.search("a man in a blue shirt", k=2)[0]) == 2
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
        assert 'nv_inference_request_success{model="person_search",version="1"} 1' in text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_readme_export_commands(esa_run, synthetic_data, tmp_path):
    """tbps export, tbps gallery, then tbps repo; the scripts they wrap answer the same way."""
    for args in (["export", esa_run, "--out", tmp_path / "onnx"],
                 ["gallery", esa_run, "--data", synthetic_data, "--split", "test", "--onnx", tmp_path / "onnx",
                  "--backend", "onnx", "--out", tmp_path / "gallery.safetensors"]):
        done = tbps(*args)
        assert done.returncode == 0, done.stderr
    out = tbps("repo", tmp_path / "onnx", tmp_path / "gallery.safetensors", "--out", tmp_path / "repo")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "repo" / "gallery_search" / "1" / "gallery.safetensors" / "gallery.json").is_file()
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    for command in ([sys.executable, str(root / "export" / "build_gallery.py")], [sys.executable, "-m", "serving.cli",
                                                                                  "gallery"]):
        bad = subprocess.run([*command, str(esa_run), "--out", str(tmp_path / "g.safetensors")],
                             capture_output=True, text=True, timeout=300)
        assert bad.returncode == 2 and "give --data DIR or --images FOLDER" in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr
