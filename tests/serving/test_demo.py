"""`tbps` as a user runs it: the whole line composed, and the demo end to end."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tbps(*args, check=True):
    done = subprocess.run([sys.executable, "-m", "serving.cli", *map(str, args)], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=600)
    if check:
        assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_tbps_lists_every_stage_command():
    usage = tbps("--help").stdout
    assert "{synth,train,eval,export,gallery,trt,repo,serve,search,report,demo}" in usage, usage
    assert "strongly typed" in tbps("trt", "--help").stdout  # the wrapped script's own description


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
