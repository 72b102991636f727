import pytest
import torch

from tests.conftest import TEST_RECIPE
from trainer.checkpoint import load_checkpoint
from trainer.data.dataset import CaptionDataset
from trainer.data.formats import load_dataset
from trainer.data.tokenizer import Tokenizer, train_bpe
from trainer.data.transforms import build_transform
from trainer.evaluate import rank_metrics
from trainer.fit import TrainConfig, train
from trainer.heads.ssan import branch_similarities, ssan_set, stripe_bounds
from trainer.losses import cr_loss, cr_margins
from trainer.model import load_config
from trainer.resnet import ResNet, load_torchvision_resnet
from trainer.retriever import Retriever

TINY_SSAN = {"resnet_layers": [1, 1, 1, 1], "resnet_width": 8, "word_dim": 32, "part_dim": 32,
             "relation_dim": 16}


def test_full_resnet50_has_torchvisions_shape_and_keys():
    net = ResNet()  # layers (3, 4, 6, 3), width 64
    # torchvision's resnet50 has 25,557,032 parameters, of which fc holds 2048 * 1000 + 1000
    assert sum(p.numel() for p in net.parameters()) == 25_557_032 - 2_049_000
    keys = net.state_dict()
    assert len(keys) == 320 - 2  # torchvision's state dict minus fc.weight / fc.bias
    for k in ("conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer3.5.conv3.weight",
              "layer4.2.bn3.num_batches_tracked", "layer4.0.downsample.1.running_mean"):
        assert k in keys
    assert keys["layer4.0.conv2.weight"].shape == (512, 512, 3, 3) and net.channels == 2048
    assert net.feature_rows(384) == 24  # last stride 1: 384x128 -> 24x8


def test_torchvision_state_dict_loads_from_a_file_and_mismatches_are_named(tmp_path):
    torch.manual_seed(0)
    source = ResNet((1, 1, 1, 1), 8)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.randn(10, 256), torch.randn(10)  # the ImageNet classifier
    torch.save(state, tmp_path / "resnet.pth")
    target = ResNet((1, 1, 1, 1), 8)
    load_torchvision_resnet(target, tmp_path / "resnet.pth")
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items())
    del state["layer2.0.conv1.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"broken\.pth.*layer2\.0\.conv1\.weight"):
        load_torchvision_resnet(target, tmp_path / "broken.pth")
    with pytest.raises(FileNotFoundError):
        load_torchvision_resnet(target, tmp_path / "absent.pth")


def test_stripes_cover_the_map_top_to_bottom():
    assert stripe_bounds(24, 6) == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 20), (20, 24)]
    assert stripe_bounds(4, 6) == [(0, 1), (0, 2), (1, 2), (2, 3), (2, 4), (3, 4)]  # adaptive pooling's bins


def _tiny_ssan(vocab=64, classes=6):
    config = load_config("tiny")
    config.text.vocab_size = vocab
    return Retriever(config, "ssan", num_classes=classes, eot_id=vocab - 1, args=TINY_SSAN)


def test_ssan_shapes_and_score_is_the_sum_of_branch_cosines():
    torch.manual_seed(0)
    model = _tiny_ssan().eval()
    enc = model.clip
    h, w = enc.config.vision.image_size
    ids = torch.randint(1, 62, (3, 77), dtype=torch.int32)
    ids[:, 10] = 63
    pixels = torch.randn(4, 3, h, w)
    with torch.no_grad():
        image, text = enc.encode_image(pixels), enc.encode_text(ids)
        assert [tuple(x.shape) for x in image] == [(4, 32), (4, 6, 32), (4, 6, 16)]
        assert [tuple(x.shape) for x in text] == [(3, 32), (3, 6, 32), (3, 6, 16)]
        sets_t, sets_v = model.encode_text(ids), model.encode_image(pixels)
    assert sets_t.shape == (3, 1, 32 * 7 + 16 * 6) == (3, 1, enc.config.embed_dim) and model.set_size == 1
    assert torch.allclose(sets_t.norm(dim=-1), torch.ones(3, 1), atol=1e-5)
    expected = sum(branch_similarities(text, image)) / 3  # cos_global + cos_parts + cos_relations, / 3
    assert torch.allclose(model.score(sets_t, sets_v), expected, atol=1e-5)
    assert torch.allclose(ssan_set(*text)[:, 0] @ ssan_set(*image)[:, 0].T, expected, atol=1e-5)


def test_bilstm_reads_each_caption_both_ways_and_ignores_padding():
    torch.manual_seed(0)
    enc = _tiny_ssan().clip
    ids = torch.randint(1, 62, (2, 77))
    ids[0, 5], ids[1, 9] = 63, 63
    with torch.no_grad():
        words, mask = enc.word_features(ids)
        assert mask.sum(1).tolist() == [6, 10]
        row = enc.word_embedding(ids[0, :6])[None]  # the valid tokens of caption 0, unpadded
        fwd = enc.lstm_forward(row)[0]
        bwd = enc.lstm_backward(row.flip(1))[0].flip(1)
        assert torch.allclose(words[0, :6], (fwd + bwd)[0] / 2, atol=1e-5)
        padded = ids.clone()
        padded[0, 6:] = 7  # what follows the end-of-text token does not matter
        assert torch.allclose(enc.encode_text(padded)[1][0], enc.encode_text(ids)[1][0], atol=1e-6)


def test_cr_adaptive_margin_on_hand_computed_numbers():
    scores = torch.tensor([[0.8, 0.1], [0.2, -0.5]])   # image i vs its own caption on the diagonal
    other = torch.tensor([[0.4, 0.0], [0.0, 0.9]])     # image i vs a caption of another image of i's person
    # l = |0.4| / |0.8| = 0.5 -> (0.5 + 1) / 2 * 0.2 = 0.15;  l = |0.9| / |-0.5| = 1.8, clipped to 1 -> 0.2
    assert torch.allclose(cr_margins(scores, other, 0.2), torch.tensor([0.15, 0.2]))


def test_cr_takes_semi_hard_negatives_only():
    pids = torch.tensor([0, 1, 2, 3])
    s = torch.full((4, 4), -1.0)
    s.fill_diagonal_(0.5)
    s[0, 1] = 0.4   # semi-hard for image anchor 0: 0 < 0.4 + 0.2 - 0.5 = 0.1 < 0.2
    s[0, 2] = 0.35  # semi-hard too, less hard: 0.05
    s[1, 0] = 0.9   # harder than the positive for image anchor 1: not semi-hard, so no loss
    other = s.clone()  # same pairs again: adaptive margins are the full 0.2
    # text anchors (columns): column 1 sees image 0 at 0.4 -> 0.1 semi-hard; column 0: 0.9 is hard;
    # column 2: 0.35 -> 0.05. Image anchors: row 0 -> 0.1 (the hardest semi-hard); row 1 -> none.
    expected = (0.1 + 0.1 + 0.05) * (1 + 0.1)
    assert cr_loss(s, other, pids, margin=0.2, other_weight=0.1).item() == pytest.approx(expected, abs=1e-6)
    same_person = torch.tensor([0, 0, 2, 3])  # image 1's caption is a positive of anchor 0, not a negative
    assert cr_loss(s, other, same_person, 0.2, 0.1).item() == pytest.approx((0.05 + 0.05) * 1.1, abs=1e-6)


def test_dataset_gives_a_caption_of_another_image_of_the_same_person(synthetic_data, tmp_path):
    entries = load_dataset(synthetic_data).train[:8]
    tok = Tokenizer(train_bpe([c for e in entries for c in e.captions], 600, tmp_path / "bpe.txt"))
    data = CaptionDataset(entries, tok, build_transform((64, 24), train=False), other_caption=True)
    caption_of = {tuple(data._ids[j].tolist()): j for j in range(len(data))}
    torch.manual_seed(0)
    for i in range(len(data)):
        item = data[i]
        j = caption_of[tuple(item["other_ids"].tolist())]
        assert data.labels[j] == data.labels[i]
        images_of_person = {int(data._image_index[k]) for k in range(len(data)) if data.labels[k] == data.labels[i]}
        if len(images_of_person) > 1:
            assert int(data._image_index[j]) != int(item["image_index"])
    assert "other_ids" not in CaptionDataset(entries, tok, build_transform((64, 24), train=False))[0]


def test_tiny_ssan_overfits_a_handful_of_pairs():
    torch.manual_seed(0)
    model = _tiny_ssan()
    h, w = model.clip.config.vision.image_size
    pixels, ids = torch.randn(6, 3, h, w), torch.randint(1, 62, (6, 77))
    ids[:, 12] = 63
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    other_ids = ids[[1, 0, 3, 2, 5, 4]]  # each person's other pair
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(40):
        opt.zero_grad()
        losses = model(pixels, ids, labels, other_ids=other_ids)
        sum(losses.values()).backward()
        opt.step()
    assert set(losses) == {"id", "cr"}
    with pytest.raises(ValueError, match="other_ids"):
        model(pixels, ids, labels)
    model.eval()
    with torch.no_grad():
        scores = model.score(model.encode_text(ids), model.encode_image(pixels))
    assert rank_metrics(scores, labels.numpy(), labels.numpy())["R1"] == 100.0


def test_ssan_trains_saves_and_loads(synthetic_data, tmp_path):
    out = tmp_path / "ssan"
    train(TrainConfig(data=str(synthetic_data), out=str(out), method_args=TINY_SSAN,
                      **dict(TEST_RECIPE, method="ssan", epochs=1)))
    ckpt = load_checkpoint(out)
    assert ckpt.config["method"] == "ssan" and ckpt.config["embed_dim"] == 32 * 7 + 16 * 6
    sets = ckpt.model.encode_text(torch.from_numpy(ckpt.tokenizer(["a woman in a red coat"])))
    assert sets.shape == (1, 1, ckpt.config["embed_dim"])
    assert torch.allclose(sets.norm(dim=-1), torch.ones(1, 1), atol=1e-5)


def test_fit_loads_ssans_trunk_from_init(synthetic_data, tmp_path):
    torch.save(ResNet((1, 1, 1, 1), 16).state_dict(), tmp_path / "wide.pth")  # not the trunk TINY_SSAN builds
    with pytest.raises(ValueError, match=r"wide\.pth.*mis-shaped"):
        train(TrainConfig(data=str(synthetic_data), out=str(tmp_path / "run"), method_args=TINY_SSAN,
                          init=str(tmp_path / "wide.pth"), **dict(TEST_RECIPE, method="ssan", epochs=1)))
