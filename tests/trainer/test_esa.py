import pytest
import torch
import torch.nn.functional as F

from kernels.set_similarity import slot_chamfer
from tests.conftest import TEST_RECIPE
from trainer.checkpoint import load_checkpoint
from trainer.evaluate import rank_metrics
from trainer.fit import TrainConfig, train
from trainer.heads.esa import SlotSetHead
from trainer.losses import asm_loss, semantic_margins, slot_diversity
from trainer.model import load_config
from trainer.retriever import Retriever


@pytest.mark.parametrize("slots", [1, 4])
def test_head_shapes_normalisation_and_mask(slots):
    torch.manual_seed(0)
    head = SlotSetHead(32, slots=slots, iterations=2)
    global_feat, tokens = torch.randn(3, 32), torch.randn(3, 10, 32)
    mask = torch.arange(10) < torch.tensor([[4], [10], [1]])
    sets = head(global_feat, tokens, mask)
    assert sets.shape == (3, slots + 1, 32)
    assert torch.allclose(sets.norm(dim=-1), torch.ones(3, slots + 1), atol=1e-5)
    assert torch.allclose(sets[:, 0], F.normalize(global_feat, dim=-1), atol=1e-6)
    changed = tokens.clone()
    changed[~mask] = 100.0  # padding after end-of-text must not matter
    assert torch.allclose(head(global_feat, changed, mask), sets, atol=1e-5)


def test_semantic_margin_grows_with_caption_distance():
    base = torch.tensor([[1.0, 0.0, 0.0]])
    near, far = torch.tensor([[0.9, 0.1, 0.0]]), torch.tensor([[0.0, 0.0, 1.0]])
    m = semantic_margins(torch.cat([base, near, far]), m0=0.05, m1=0.25)
    assert m[0, 0] == pytest.approx(0.05) and m[0, 0] < m[0, 1] < m[0, 2] <= 0.30 + 1e-6
    assert torch.allclose(m, m.T)
    assert not semantic_margins(torch.randn(4, 3, requires_grad=True), 0.1, 0.2).requires_grad


def test_asm_loss_is_zero_when_margins_hold_and_ignores_same_person():
    pids = torch.tensor([0, 1, 2, 2])
    scores = torch.full((4, 4), -1.0)
    scores.fill_diagonal_(1.0)
    scores[2, 3] = scores[3, 2] = 5.0  # same person: not a negative
    margins = torch.full((4, 4), 0.3)
    assert asm_loss(scores, margins, pids, tau=0.01).item() < 1e-6
    scores[0, 1] = 0.9  # a negative inside the margin of anchor 0
    assert asm_loss(scores, margins, pids, tau=0.01).item() > 0.1


def test_asm_and_diversity_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    text = torch.randn(5, 4, generator=g, dtype=torch.float64)
    pids = torch.tensor([0, 1, 1, 2, 3])
    margins = semantic_margins(text, 0.05, 0.25)
    assert torch.autograd.gradcheck(lambda s: asm_loss(s, margins, pids, tau=0.1), (scores,))
    sets = F.normalize(torch.randn(3, 4, 6, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    assert torch.autograd.gradcheck(slot_diversity, (sets,))
    assert slot_diversity(sets[:, :2]).item() == 0.0  # one slot: nothing to keep apart


def _tiny_esa(vocab=64, classes=6):
    config = load_config("tiny")
    config.text.vocab_size = vocab
    return Retriever(config, "esa", num_classes=classes, eot_id=vocab - 1,
                     args={"slots": 2, "iterations": 2})


def _overfit(model: Retriever, n: int = 6, steps: int = 40):
    """Train on n random pairs, one person each; return (text_sets, image_sets, labels) after."""
    h, w = model.clip.config.vision.image_size
    pixels, ids, labels = torch.randn(n, 3, h, w), torch.randint(1, 62, (n, 77)), torch.arange(n)
    ids[:, 12] = 63
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        sum(model(pixels, ids, labels).values()).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return model.encode_text(ids), model.encode_image(pixels), labels.numpy()


# 40 steps on 6 pairs is a chaotic trajectory: CPUs whose kernels round differently (AVX-512
# against AVX2) end in different places, so exact R1 == 100 held on one machine and not another.
# The thresholds below hold on both kinds with margin, and stay far above chance (R1 16.7).


def test_tiny_esa_overfits_a_handful_of_pairs():
    torch.manual_seed(0)
    model = _tiny_esa()
    text, image, labels = _overfit(model)
    assert rank_metrics(model.score(text, image), labels, labels)["R1"] >= 5 / 6 * 100 - 1e-6


def test_slot_sdm_makes_the_slots_alone_rank_the_pairs():
    # Without a loss on the slots alone, trained heads collapsed to the same slots for every item
    # (benchmarks/bench_set_terms.py); slot SDM must make rows 1..K identify the person by themselves.
    slots_r1 = []
    for seed in range(3):  # one 6-pair run is too coarse a measure (R1 moves in steps of 16.7)
        torch.manual_seed(seed)
        model = _tiny_esa()
        assert model.args["slot_sdm_weight"] == 1.0  # the default
        text, image, labels = _overfit(model)
        slots_r1.append(rank_metrics(slot_chamfer(text, image, model.args["alpha"]), labels, labels)["R1"])
    assert sum(slots_r1) / len(slots_r1) >= 50.0, slots_r1  # 3x chance


def test_esa_trains_saves_and_loads_as_sets(synthetic_data, tmp_path):
    out = tmp_path / "esa"
    recipe = dict(TEST_RECIPE, method="esa", epochs=1)
    train(TrainConfig(data=str(synthetic_data), out=str(out), method_args={"slots": 3}, **recipe))
    ckpt = load_checkpoint(out)
    assert ckpt.config["set_size"] == 4 and ckpt.config["method_args"]["slots"] == 3
    sets = ckpt.model.encode_text(torch.from_numpy(ckpt.tokenizer(["a woman in a red coat"])))
    assert sets.shape == (1, 4, ckpt.config["embed_dim"])
