import numpy as np
import pytest
import torch

from tests.conftest import TEST_RECIPE
from trainer.checkpoint import load_checkpoint
from trainer.data.dataset import CaptionDataset
from trainer.data.formats import load_dataset
from trainer.data import pos_tagger
from trainer.data.pos_tagger import prune_caption, tag
from trainer.data.tokenizer import Tokenizer, train_bpe
from trainer.data.transforms import CLIP_MEAN, CLIP_STD, build_transform
from trainer.evaluate import rank_metrics
from trainer.fit import TrainConfig, train
from trainer.heads.sen import (RestorationDecoder, grayscale, masked_image_tokens, patchify, random_keep,
                               restoration_loss)
from trainer.losses import hardest_triplet_loss
from trainer.model import CLIP, load_config
from trainer.retriever import Retriever

TINY_SEN = {"decoder_width": 64, "decoder_layers": 1, "decoder_heads": 4}


def _normalise(rgb):
    return (rgb - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def test_grayscale_is_the_luma_formula_on_unnormalised_colours():
    rgb = torch.rand(2, 3, 8, 4)
    gray = grayscale(_normalise(rgb))
    back = gray * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    expected = 0.2989 * rgb[:, 0] + 0.5870 * rgb[:, 1] + 0.1140 * rgb[:, 2]
    for c in range(3):
        assert torch.allclose(back[:, c], expected, atol=1e-6)


def test_random_keep_masks_seventy_percent_and_patchify_follows_the_token_grid():
    torch.manual_seed(0)
    keep = random_keep(5, 192, 0.7, torch.device("cpu"))  # ViT-B/16 at 384x128: 24x8 patches
    assert keep.shape == (5, 57) and (192 - 57) / 192 == pytest.approx(0.70, abs=0.01)  # MAE's int(192 * 0.3)
    assert all(len(set(row.tolist())) == 57 for row in keep) and (keep.diff(dim=1) > 0).all()
    assert not torch.equal(keep[0], keep[1])  # a fresh draw per image
    pixels = torch.arange(2 * 3 * 32 * 16, dtype=torch.float32).view(2, 3, 32, 16)
    patches = patchify(pixels, 8)  # grid 4x2, row-major
    assert patches.shape == (2, 8, 8 * 8 * 3)
    assert torch.equal(patches[1, 5], pixels[1, :, 16:24, 8:16].permute(1, 2, 0).flatten())


def test_masking_happens_after_the_positional_embedding_and_keeps_cls():
    config = load_config("tiny")
    config.vision.layers = 0  # no attention: each output token depends on its own input only
    torch.manual_seed(0)
    visual = CLIP(config).visual
    pixels = torch.randn(2, 3, *config.vision.image_size)
    full = visual(pixels)
    keep = random_keep(2, full.shape[1] - 1, 0.7, torch.device("cpu"))
    out = masked_image_tokens(visual, pixels, keep)
    assert out.shape == (2, 1 + keep.shape[1], full.shape[-1])
    assert torch.allclose(out[:, 0], full[:, 0], atol=1e-5)  # CLS kept, at its own position
    # each kept patch carries its own position: the drop came after the embedding was added
    assert torch.allclose(out[:, 1:], full[:, 1:].gather(1, keep[..., None].expand(-1, -1, full.shape[-1])), atol=1e-5)
    config.vision.layers = 2
    visual = CLIP(config).visual
    all_kept = torch.arange(full.shape[1] - 1).expand(2, -1)
    assert torch.allclose(masked_image_tokens(visual, pixels, all_kept), visual(pixels), atol=1e-5)


def test_decoder_shapes_reads_the_caption_and_loss_counts_only_masked_patches():
    torch.manual_seed(0)
    dec = RestorationDecoder(32, (4, 2), 8, width=16, layers=1, heads=2)
    keep = torch.tensor([[0, 5], [2, 7]])
    visible, text = torch.randn(2, 3, 32), torch.randn(2, 6, 32)
    mask = torch.arange(6) < torch.tensor([[3], [6]])
    pred = dec(visible, keep, text, mask)
    assert pred.shape == (2, 8, 8 * 8 * 3)
    changed = text.clone()
    changed[0, 0] += 1.0
    assert not torch.allclose(dec(visible, keep, changed, mask)[0], pred[0])  # the text guides restoration
    changed = text.clone()
    changed[0, 4:] += 100.0  # beyond the caption's end: ignored
    assert torch.allclose(dec(visible, keep, changed, mask), pred, atol=1e-5)
    target = torch.randn_like(pred)
    loss = restoration_loss(pred, target, keep)
    moved = target.clone()
    moved[0, 5] += 10.0  # a kept (visible) patch: not part of the loss
    assert restoration_loss(pred, moved, keep) == loss
    moved[0, 1] += 10.0
    assert restoration_loss(pred, moved, keep) > loss


def test_triplet_uses_the_hardest_negative_of_another_person_both_ways():
    # text i (rows) against image j; people 0, 0, 1
    scores = torch.tensor([[0.9, 0.95, 0.3],
                           [0.2, 0.6, 0.5],
                           [0.1, 0.7, 0.8]])
    pids = torch.tensor([0, 0, 1])
    m = 0.05
    # text anchors: row 0's hardest other-person image is 0.3 (0.95 is the same person), row 1: 0.5,
    # row 2: max(0.1, 0.7) = 0.7. image anchors (columns): col 0: 0.1, col 1: 0.7, col 2: max(0.3, 0.5) = 0.5
    text = [max(0, m + 0.3 - 0.9), max(0, m + 0.5 - 0.6), max(0, m + 0.7 - 0.8)]
    image = [max(0, m + 0.1 - 0.9), max(0, m + 0.7 - 0.6), max(0, m + 0.5 - 0.8)]
    expected = np.mean(text) + np.mean(image)
    assert hardest_triplet_loss(scores, pids, m).item() == pytest.approx(expected, abs=1e-6)


CAPTIONS = [
    ("A woman wearing a red coat and black pants. She is carrying a white handbag.",
     "woman red coat black pants she white handbag"),
    ("The slim man in a blue and white striped shirt with short sleeves is walking down the street.",
     "slim man blue white striped shirt short sleeves street"),
    ("This pedestrian wears grey sneakers and has long blonde hair that falls past the shoulders.",
     "pedestrian grey sneakers long blonde hair shoulders"),
    ("A young man with a backpack on his back is holding a cell phone in his hand.",
     "young man backpack his back cell phone his hand"),
]


@pytest.mark.parametrize("caption, pruned", CAPTIONS)
def test_builtin_tagger_prunes_typical_captions(caption, pruned, monkeypatch):
    monkeypatch.setattr(pos_tagger, "_nltk_pos_tag", lambda: None)  # as where NLTK's data is missing
    assert pos_tagger.tagger_name() == "builtin"
    assert prune_caption(caption) == pruned


def test_pruning_drops_function_words_with_whichever_tagger_is_installed():
    tags = dict(tag(CAPTIONS[0][0]))
    assert tags["a"] == "DT" and tags["and"] == "CC" and tags["wearing"].startswith("VB")
    assert tags["coat"] == "NN" and tags["red"] == "JJ" and tags["she"] == "PRP"
    assert prune_caption("and of the") == "and of the"  # nothing to keep: the caption stays whole


def test_dataset_prunes_with_its_probability(synthetic_data, tmp_path):
    train_entries = load_dataset(synthetic_data).train[:6]
    tok = Tokenizer(train_bpe([c for e in train_entries for c in e.captions], 600, tmp_path / "bpe.txt"))
    transform = build_transform((64, 24), train=False)
    always = CaptionDataset(train_entries, tok, transform, prune_p=1.0)
    never = CaptionDataset(train_entries, tok, transform)
    assert tok.decode(always[0]["ids"]) == tok.decode(tok([prune_caption(always.captions[0])])[0])
    assert torch.equal(never[0]["ids"], torch.from_numpy(tok([never.captions[0]])[0]))
    with pytest.raises(ValueError, match="prune_p"):
        CaptionDataset(train_entries, tok, transform, prune_p=1.5)


def _tiny_sen(vocab=64, classes=6):
    config = load_config("tiny")
    config.text.vocab_size = vocab
    return Retriever(config, "sen", num_classes=classes, eot_id=vocab - 1, args=TINY_SEN)


def test_tiny_sen_overfits_a_handful_of_pairs():
    torch.manual_seed(0)
    model = _tiny_sen()
    h, w = model.clip.config.vision.image_size
    pixels, ids = torch.randn(6, 3, h, w), torch.randint(1, 62, (6, 77))
    ids[:, 12] = 63
    labels = torch.arange(6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(40):
        opt.zero_grad()
        losses = model(pixels, ids, labels)
        sum(losses.values()).backward()
        opt.step()
    assert set(losses) == {"id", "sdm", "triplet", "tir"}
    model.eval()
    with torch.no_grad():
        text, image = model.encode_text(ids), model.encode_image(pixels)
        scores = model.score(text, image)
    assert text.shape == (6, 1, 128) and model.set_size == 1
    assert rank_metrics(scores, labels.numpy(), labels.numpy())["R1"] == 100.0


def test_sen_trains_saves_and_loads(synthetic_data, tmp_path):
    out = tmp_path / "sen"
    train(TrainConfig(data=str(synthetic_data), out=str(out), method_args=TINY_SEN,
                      **dict(TEST_RECIPE, method="sen", epochs=1)))
    ckpt = load_checkpoint(out)
    assert ckpt.config["method"] == "sen" and ckpt.config["method_args"]["prune_p"] == 0.2
    sets = ckpt.model.encode_text(torch.from_numpy(ckpt.tokenizer(["a woman in a red coat"])))
    assert sets.shape == (1, 1, ckpt.config["embed_dim"])
