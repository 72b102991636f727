"""`recipe("irra")` is IRRA's recipe (anosorae/IRRA at cfc2378) item by item, and tbps's default differs:
each test computes IRRA's behaviour from its documented operations, not from tbps's code."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TEST_RECIPE
from trainer.checkpoint import load_checkpoint, load_train_state, read_config
from trainer.data.pixels import CLIP_MEAN, CLIP_STD, Preprocess
from trainer.data.sampler import IdentityBatchSampler, RandomBatchSampler
from trainer.data.transforms import build_transform
from trainer.fit import TrainConfig, _lr_lambda, _param_groups, train
from trainer.model import load_config
from trainer.recipes import recipe
from trainer.retriever import Retriever

SIZE = (48, 16)


def _config(name: str, **over) -> TrainConfig:
    return TrainConfig(data="-", out="-", **recipe(name, **over))


def _irra_groups(model) -> dict[str, tuple[float, float]]:
    """IRRA's solver/build.py build_optimizer: lr 1e-5, decay 4e-5; "bias" in the name: lr x2
    (bias_lr_factor), decay 0 (weight_decay_bias); "classifier" in the name: lr x5 (lr_factor)."""
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lr, decay = 1e-5, 4e-5
        if "bias" in name:
            lr, decay = 1e-5 * 2, 0.0
        if "classifier" in name:
            lr = 1e-5 * 5
        out[name] = (lr, decay)
    return out


def test_optimizer_groups_irra_equal_irra_tbps_differ():
    config = load_config("tiny")
    config.text.vocab_size = 300
    model = Retriever(config, "baseline", 7, 299)
    irra = _irra_groups(model)
    found = {c: {g["name"]: (g["lr"], g["weight_decay"]) for g in _param_groups(model, _config(c))}
             for c in ("irra", "tbps")}
    assert found["irra"].keys() == irra.keys()
    assert all(found["irra"][n] == pytest.approx(irra[n]) for n in irra)
    assert found["tbps"]["classifier.bias"][0] == pytest.approx(1e-4)          # x10, IRRA x5
    assert found["tbps"]["clip.ln_final.weight"][1] == 0.0                       # 1-D: no decay, IRRA 4e-5
    assert irra["clip.ln_final.weight"][1] == 4e-5
    assert _config("irra").adam_eps == 1e-3 and _config("tbps").adam_eps == 1e-8


def _irra_lr_factor(epoch: int, warmup: int = 5, total: int = 60) -> float:
    """IRRA's LRSchedulerWithWarmup (linear warm-up from 0.1, cosine), last_epoch = epoch, stepped
    after every epoch by processor.py."""
    if epoch < warmup:
        alpha = epoch / warmup
        return 0.1 * (1 - alpha) + alpha
    return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / (total - warmup)))


def test_schedule_per_epoch_irra_per_step_tbps():
    spe = 7
    irra, tbps = _lr_lambda(_config("irra"), spe), _lr_lambda(_config("tbps"), spe)
    steps = range(60 * spe)
    assert [irra(s) for s in steps] == pytest.approx([_irra_lr_factor(s // spe) for s in steps])
    assert tbps(spe + 3) != pytest.approx(_irra_lr_factor(1))                   # moves inside an epoch


def test_sampler_random_irra_identity_tbps():
    labels = np.repeat(np.arange(40), 5)                                         # 40 people x 5 captions
    epochs = [list(RandomBatchSampler(len(labels), 64, seed=1).__iter__()) for _ in range(2)]
    shuffled = RandomBatchSampler(len(labels), 64, seed=1)
    shuffled.set_epoch(1)
    batches = list(shuffled)
    # a shuffling DataLoader: one permutation of every sample cut into batches, the last one smaller
    assert [len(b) for b in batches] == [64, 64, 64, 8]
    assert sorted(i for b in batches for i in b) == list(range(len(labels)))
    assert epochs[0] == epochs[1] and batches != epochs[0]
    rows = [np.mean([(labels[b] == labels[i]).sum() - 1 for i in b]) for b in batches[:3]]
    tbps = list(IdentityBatchSampler(labels, 64, 4, seed=1))
    same = [np.mean([(labels[b] == labels[i]).sum() - 1 for i in b]) for b in tbps]
    assert max(rows) < 2 and min(same) == 3                                     # ~1 positive a row vs 4
    assert _config("irra").sampler == "random" and _config("tbps").sampler == "identity"
    ranks = [list(RandomBatchSampler(len(labels), 16, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 6 and not set(map(tuple, ranks[0])) & set(map(tuple, ranks[1]))


def _fixed_image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (101, 37, 3), dtype=np.uint8))


def _documented(img: Image.Image) -> np.ndarray:
    """torchvision Resize((H, W)) of a PIL image (PIL's resize, bilinear), ToTensor, Normalize(CLIP)."""
    x = np.asarray(img.resize(SIZE[::-1], Image.BILINEAR), dtype=np.float32).transpose(2, 0, 1) / 255
    return (x - np.array(CLIP_MEAN).reshape(3, 1, 1)) / np.array(CLIP_STD).reshape(3, 1, 1)


def _transform(name: str, **aug):
    c = _config(name)
    return build_transform(Preprocess(SIZE, c.resize), True, erase_max=c.erase_max, erase_fill=c.erase_fill, **aug)


def test_resize_bilinear_irra_bicubic_tbps():
    img, expected = _fixed_image(), _documented(_fixed_image())
    irra = _transform("irra", flip_p=0.0, pad=0, erase_p=0.0)(img).numpy()
    tbps = _transform("tbps", flip_p=0.0, pad=0, erase_p=0.0)(img).numpy()
    assert np.abs(irra - expected).max() < 1e-5
    assert np.abs(tbps - expected).max() > 0.1
    assert np.abs(build_transform(Preprocess(SIZE, "bilinear"), False)(img).numpy() - expected).max() < 1e-5


def _erased(name: str) -> tuple[list[float], set]:
    """Area fractions and fill values of 200 erasures of a flat image."""
    t = _transform(name, flip_p=0.0, pad=0, erase_p=1.0)
    flat = Image.new("RGB", SIZE[::-1], (20, 200, 90))
    base = torch.from_numpy(_documented(flat)).float()
    torch.manual_seed(0)
    areas, fills = [], set()
    for _ in range(200):
        x = t(flat)
        changed = ~torch.isclose(x, base, atol=1e-5).all(0)
        ys, xs = torch.nonzero(changed, as_tuple=True)
        if len(ys):
            assert (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1) == len(ys)  # one rectangle
            areas.append(len(ys) / (SIZE[0] * SIZE[1]))
            fills.add(tuple(x[:, ys[0], xs[0]].tolist()))
    return areas, fills


def test_random_erasing_irra_grey_up_to_40_percent():
    # RandomErasing(scale=(0.02, 0.4), value=mean) on the normalised tensor writes the mean's numbers
    areas, fills = _erased("irra")
    assert fills == {tuple(torch.tensor(CLIP_MEAN).tolist())}                 # value=mean, as float32
    assert 0.36 < max(areas) < 0.42                                             # 40 %, sides rounded
    areas, fills = _erased("tbps")
    assert fills == {(0.0, 0.0, 0.0)} and max(areas) < 0.36                    # 33 %, the mean colour


def test_train_irra_records_recipe_and_preprocessing(synthetic_data, tmp_path, capsys):
    out = tmp_path / "run"
    train(TrainConfig(data=str(synthetic_data), out=str(out), **recipe("test+irra", epochs=1, progress=True)))
    printed = capsys.readouterr()
    assert "recipe test+irra" in printed.out
    # stderr is not a terminal here: lines, not a bar's redraws (trainer/progress.py)
    assert "\r" not in printed.err and "epoch 1/1 done in" in printed.err
    assert 2 <= len(printed.err.splitlines()) <= 12, printed.err
    config = read_config(out)
    assert config["meta"]["train"]["recipe"] == "test+irra"
    assert config["image"]["resize"] == "bilinear"
    assert load_checkpoint(out).model.preprocess == Preprocess((64, 32), "bilinear")
    groups = load_train_state(out / "epoch_001")["optimizer"]["param_groups"]
    assert {g["eps"] for g in groups} == {1e-3}
    assert {g["weight_decay"] for g in groups if "bias" in g["name"]} == {0.0}
    # no clipping: IRRA's processor.py steps without clip_grad_norm_; tbps clips at 5
    assert json.loads((out / "log.jsonl").read_text().splitlines()[0])["config"]["grad_clip"] == 0.0
    assert _config("tbps").grad_clip == 5.0 and TEST_RECIPE["recipe"] == "test"


def test_command_line_recipe_under_explicit_flags():
    import argparse

    from trainer.cli import add_commands, train_config
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    base = ["train", "--data", "d", "--out", "o"]
    assert train_config(parser.parse_args(base)) == TrainConfig(data="d", out="o")
    irra = train_config(parser.parse_args(base + ["--recipe", "irra", "--grad-clip", "1", "--method-arg", "id_weight=0.5"]))
    assert irra == TrainConfig(data="d", out="o", **recipe("irra", grad_clip=1.0, method_args={"id_weight": 0.5}))
    assert irra.recipe == "irra" and irra.sampler == "random" and irra.grad_clip == 1.0
    with pytest.raises(ValueError, match="unknown recipe 'irr'"):
        train_config(parser.parse_args(base + ["--recipe", "irr"]))
    with pytest.raises(ValueError, match="sampler must be one of identity, random, got 'pk'"):
        train_config(parser.parse_args(base + ["--sampler", "pk"]))
