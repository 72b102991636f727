import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TEST_RECIPE
from trainer.checkpoint import CheckpointError, epoch_dirs, load_checkpoint, read_config
from trainer.fit import TrainConfig, train

REPO = Path(__file__).resolve().parents[2]


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _train_cmd(data: Path, out: Path, epochs: int) -> list[str]:
    args = [sys.executable, "-m", "trainer", "train", "--data", str(data), "--out", str(out),
            "--epochs", str(epochs)]
    for key, value in TEST_RECIPE.items():
        flag = "--" + key.replace("_", "-")
        args += [flag if value else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)]
    return args


def _env() -> dict:
    # gloo on the loopback interface only: these tests must not touch the network
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), GLOO_SOCKET_IFNAME="lo")


def test_run_layout_log_and_checkpoint(tiny_run):
    assert [p.name for p in epoch_dirs(tiny_run)] == ["epoch_001", "epoch_002"]
    for name in ("model.safetensors", "config.json", "tokenizer.txt.gz", "train_state.pt"):
        assert (tiny_run / "epoch_002" / name).is_file(), name
    events = _events(tiny_run)
    assert events[0]["event"] == "start" and events[-1]["event"] == "summary"
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert set(epochs[0]["val"]["t2i"]) == {"R1", "R5", "R10", "mAP", "mINP"}
    summary = events[-1]
    assert summary["best_epoch"] in (1, 2) and summary["last_val"] == epochs[-1]["val"]
    steps = [e for e in events if e["event"] == "step"]
    assert steps and all(e["loss"] > 0 and {"sdm", "id", "lr"} <= e.keys() for e in steps)

    ckpt = load_checkpoint(tiny_run)  # a run directory resolves to best/
    assert ckpt.path == tiny_run / "best"
    assert ckpt.config["set_size"] == 1 and ckpt.config["method"] == "baseline"
    ids = torch.from_numpy(ckpt.tokenizer(["a man in a red shirt", "a woman"]))
    sets = ckpt.model.encode_text(ids)
    assert sets.shape == (2, 1, ckpt.config["embed_dim"])
    assert torch.allclose(sets.norm(dim=-1), torch.ones(2, 1), atol=1e-5)


def test_checkpoint_refuses_tampering(tiny_run, tmp_path):
    import shutil
    bad = tmp_path / "ckpt"
    shutil.copytree(tiny_run / "best", bad)
    weights = load_file(bad / "model.safetensors")
    weights["classifier.bias"] += 1
    from safetensors.torch import save_file
    save_file(weights, bad / "model.safetensors")
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a checkpoint"):
        load_checkpoint(tmp_path / "empty")
    config = json.loads((bad / "config.json").read_text())
    del config["tokenizer"]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="missing field.*tokenizer"):
        read_config(bad)


@pytest.mark.slow
def test_resume_after_kill_is_exact(synthetic_data, tmp_path):
    """Kill a run during its second epoch, start it again: it resumes from epoch 1 and ends
    with exactly the weights of a run that was never interrupted."""
    epochs = 3
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_train_cmd(synthetic_data, straight, epochs), env=_env(), check=True,
                   capture_output=True)

    proc = subprocess.Popen(_train_cmd(synthetic_data, killed, epochs), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "epoch_001" / "config.json").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before epoch 1 was saved"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "epoch_003").exists(), "killed too late to test a resume"

    done = subprocess.run(_train_cmd(synthetic_data, killed, epochs), env=_env(),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    a = load_file(straight / f"epoch_{epochs:03d}" / "model.safetensors")
    b = load_file(killed / f"epoch_{epochs:03d}" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)

    starts = [e for e in _events(killed) if e["event"] == "start"]
    assert starts[-1]["resumed_from"].endswith(("epoch_001", "epoch_002"))
    steps = [e["step"] for e in _events(killed) if e["event"] == "step"]
    assert steps == sorted(set(steps)), "steps repeated or lost in the resumed log"
    assert steps == [e["step"] for e in _events(straight) if e["event"] == "step"]


def test_finished_run_is_not_retrained(tiny_run, capsys):
    before = (tiny_run / "log.jsonl").read_text()
    train(TrainConfig(data="ignored", out=str(tiny_run), epochs=2))
    assert "nothing to train" in capsys.readouterr().out
    assert (tiny_run / "log.jsonl").read_text() == before


def test_bad_method_fails_before_any_work(synthetic_data, tmp_path):
    with pytest.raises(ValueError, match="unknown method 'nope'.*baseline"):
        train(TrainConfig(data=str(synthetic_data), out=str(tmp_path / "r"), method="nope",
                          epochs=1))


def _ddp_worker(rank: int, world: int, port: int, result: str, method: str) -> None:
    """Each of 2 processes takes half a batch; DDP's averaged gradient must equal the
    gradient of one process on the whole batch (the SDM loss spans processes)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from trainer.fit import _Gather
    from trainer.model import load_config
    from trainer.retriever import Retriever

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    config = load_config("tiny")
    config.text.vocab_size = 300
    torch.manual_seed(0)
    args = {"slots": 2, "iterations": 1} if method == "esa" else {}
    model = Retriever(config, method, num_classes=5, eot_id=299, args=args)
    g = torch.Generator().manual_seed(1)
    h, w = config.vision.image_size
    pixels = torch.randn(8, 3, h, w, generator=g)
    ids = torch.randint(1, 298, (8, 77), generator=g)
    ids[:, 20] = 299
    labels = torch.tensor([0, 1, 1, 2, 3, 3, 4, 0])
    half = slice(rank * 4, rank * 4 + 4)
    net = DistributedDataParallel(model)
    sum(net(pixels[half], ids[half], labels[half], _Gather.apply).values()).backward()
    if rank == 0:
        single = Retriever(config, method, num_classes=5, eot_id=299, args=args)
        single.load_state_dict(model.state_dict())
        sum(single(pixels, ids, labels).values()).backward()
        pairs = [(p.grad, q.grad) for p, q in zip(model.parameters(), single.parameters()) if p.requires_grad]
        # relative to the largest gradient: some are exactly zero in theory (a bias shared by
        # all slots shifts every slot's logit alike), and their rounding noise has no scale of its own
        scale = max(q.abs().max().item() for _, q in pairs)
        worst = max((p - q).abs().max().item() for p, q in pairs) / scale
        Path(result).write_text(str(worst))
    dist.barrier()  # tear down together: rank 1 leaving while rank 0 still works aborted it ("terminate called")
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["baseline", "esa"])
def test_ddp_gradient_equals_single_process(tmp_path, method):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = tmp_path / "worst"
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(result), method), nprocs=2)
    assert float(result.read_text()) < 1e-4


@pytest.mark.slow
def test_torchrun_two_cpu_processes(synthetic_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--standalone"] + _train_cmd(synthetic_data, out, 1)[1:]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    start = _events(out)[0]
    assert start["world_size"] == 2
    ckpt = load_checkpoint(out)
    assert read_config(ckpt.path)["meta"]["epoch"] == 1
    with pytest.raises(ValueError, match="written by a run of 2 process"):
        train(TrainConfig(data=str(synthetic_data), out=str(out), epochs=2))


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    import random
    import numpy as np
    from trainer.fit import _rng_state, _set_rng_state
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.standard_normal()  # leave cached Gaussians behind
    torch.save(_rng_state(), tmp_path / "rng.pt")
    draw = lambda: (random.random(), random.gauss(0, 1), np.random.standard_normal(), torch.rand(2).tolist())
    expected = draw()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    _set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draw() == expected


def test_finetune_from_openai_format_weights(synthetic_data, tmp_path):
    """The CUHK-PEDES path (`--init ViT-B-16.pt --bpe vocab`): an fp16 TorchScript archive
    with a square 4x4 grid, fine-tuned at tiny's 8x4 grid with CLIP-format merges."""
    from tests.trainer.test_model import write_weights
    from trainer.data.formats import load_dataset
    from trainer.data.tokenizer import Tokenizer, train_bpe
    from trainer.model import CLIP, ClipConfig, load_config

    captions = [c for e in load_dataset(synthetic_data).train for c in e.captions]
    bpe = train_bpe(captions, 600, tmp_path / "bpe.txt.gz")
    arch = load_config("tiny").to_dict()
    arch["vision"]["image_size"] = [32, 32]
    arch["text"]["vocab_size"] = Tokenizer(bpe).vocab_size
    torch.manual_seed(0)
    pretrained = CLIP(ClipConfig.from_dict(arch))
    weights = tmp_path / "ViT-tiny.pt"
    write_weights(pretrained, weights, torchscript=True, half=True)

    recipe = dict(TEST_RECIPE, epochs=1)
    with pytest.raises(ValueError, match="vocabulary of .* pass --bpe"):
        train(TrainConfig(data=str(synthetic_data), out=str(tmp_path / "nobpe"), init=str(weights),
                          **dict(recipe, bpe_vocab=700)))
    out = tmp_path / "run"
    train(TrainConfig(data=str(synthetic_data), out=str(out), init=str(weights), bpe=str(bpe), **recipe))
    ckpt = load_checkpoint(out)
    vision = ckpt.config["model"]["vision"]
    assert vision["image_size"] == [64, 32] and vision["heads"] == 2  # heads inferred as width // 64
    assert ckpt.tokenizer.vocab_size == arch["text"]["vocab_size"]
    start = pretrained.text_projection.flatten()
    tuned = ckpt.model.clip.text_projection.flatten()
    assert torch.nn.functional.cosine_similarity(start, tuned, dim=0) > 0.9  # fine-tuned, not re-initialised
