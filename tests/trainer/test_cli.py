"""The `tbps` command as a user runs it: a real process, real files."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def tbps(*args, check=True):
    done = subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=600)
    if check:
        assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_synth_writes_dataset_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "data"
    done = tbps("synth", "--out", out, "--ids", 5, "--seed", 1, "--image-size", "32x16")
    assert "reid_raw.json" in done.stdout
    entries = json.loads((out / "reid_raw.json").read_text())
    assert {e["id"] for e in entries} == {1, 2, 3, 4, 5}
    again = tbps("synth", "--out", out, "--ids", 5, check=False)
    assert again.returncode == 2 and "reid_raw.json" in again.stderr and "Traceback" not in again.stderr
    bad = tbps("synth", "--out", tmp_path / "x", "--image-size", "big", check=False)
    assert bad.returncode == 2 and "HxW" in bad.stderr


@pytest.mark.parametrize("margin", ["0", "0.5"])
def test_eval_json_keys_in_percent(tiny_run, synthetic_data, margin):
    done = tbps("eval", tiny_run, "--data", synthetic_data, "--split", "test", "--json", "--margin", margin)
    metrics = json.loads(done.stdout)
    assert set(metrics) == {"t2i", "i2t"}
    for m in metrics.values():
        assert set(m) == {"R1", "R5", "R10", "mAP", "mINP"}
        assert all(0 <= v <= 100 for v in m.values())
        assert m["R1"] <= m["R5"] <= m["R10"]


@pytest.mark.parametrize("args,message", [
    (["eval", "{tmp}/missing", "--data", "{data}"], "checkpoint not found"),
    (["eval", "{run}", "--data", "{tmp}"], "reid_raw.json"),
    (["train", "--data", "{data}", "--out", "{tmp}/r", "--method", "nope"], "unknown method 'nope'"),
    (["train", "--data", "{data}", "--out", "{tmp}/r", "--config", "huge"], "unknown model config 'huge'"),
    (["train", "--data", "{data}", "--out", "{tmp}/r", "--init", "{tmp}/ViT-B-16.pt", "--config", "tiny"],
     "ViT-B-16.pt"),
])
def test_bad_input_gives_one_clear_line(args, message, tmp_path, tiny_run, synthetic_data):
    args = [a.format(tmp=tmp_path, data=synthetic_data, run=tiny_run) for a in args]
    done = tbps(*args, check=False)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_demo_runs_every_stage_then_reuses_them(tmp_path):
    work = tmp_path / "demo"
    first = tbps("demo", "--workdir", work, "--ids", 8, "--epochs", 1)
    for stage in ("1/6 synthesize", "2/6 train", "3/6 export", "4/6 encode the gallery", "5/6 start a local Triton",
                  "6/6 16 held-out captions over gRPC", "text-to-image: R1", "example queries"):
        assert stage in first.stdout, stage
    assert (work / "run" / "best" / "model.safetensors").is_file()
    assert "results page:" in first.stdout and "<img" in (work / "report.html").read_text()
    again = tbps("demo", "--workdir", work, "--ids", 8, "--epochs", 1)
    for reused in ("reusing the existing dataset", "nothing to train", "reusing the export", "reusing the gallery"):
        assert reused in again.stdout, reused
    # the same rankings from the rebuilt server
    assert first.stdout.split("text-to-image:")[1].split("done in")[0] == \
        again.stdout.split("text-to-image:")[1].split("done in")[0]
