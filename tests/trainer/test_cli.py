"""`python -m trainer` (the trainer's commands, what torchrun runs) as a user runs it: a real process, real files."""
import json

import pytest

from tests.conftest import run_command


def tbps(*args, check=True):
    return run_command("trainer", *args, check=check)


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


def test_the_trainer_has_only_its_own_commands():
    usage = tbps("--help").stdout
    assert "{synth,train,eval,import}" in usage, usage
