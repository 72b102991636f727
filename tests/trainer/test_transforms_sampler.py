"""Image transforms, the identity batch sampler and the caption / image datasets."""
import pickle
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.data.dataset import CaptionDataset, ImageDataset
from trainer.data.formats import ImageEntry
from trainer.data.sampler import IdentityBatchSampler
from trainer.data.transforms import CLIP_MEAN, CLIP_STD, build_transform, load_image

SIZE = (32, 16)
MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(CLIP_STD).view(3, 1, 1)


def _norm(rgb):
    return (torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1) / 255 - MEAN) / STD


def _halves(h=32, w=16):
    """White left half, black right half."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = 255
    return Image.fromarray(a)


def _noise(h=40, w=20, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# ---------------------------------------------------------------------------- transforms

def test_eval_transform_shape_dtype_and_normalisation():
    t = build_transform(SIZE, train=False)
    x = t(Image.new("RGB", (50, 120), (128, 128, 128)))          # resized from 120 x 50
    assert x.shape == (3, *SIZE) and x.dtype == torch.float32
    assert torch.allclose(x, _norm((128, 128, 128)).expand(3, *SIZE), atol=1e-6)
    img = _noise()
    assert torch.equal(t(img), t(img))
    y = t(img.convert("L"))                                      # grey inputs become RGB
    assert y.shape == (3, *SIZE)


def test_eval_transform_ignores_global_rng():
    t = build_transform(SIZE, train=False)
    state = torch.get_rng_state()
    t(_noise())
    assert torch.equal(state, torch.get_rng_state())


def test_train_transform_reproducible_from_torch_rng():
    t = build_transform(SIZE, train=True, pad=3)
    img = _noise()
    torch.manual_seed(5)
    a = [t(img) for _ in range(6)]
    torch.manual_seed(5)
    b = [t(img) for _ in range(6)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a[0].shape == (3, *SIZE) and a[0].dtype == torch.float32
    assert any(not torch.equal(a[0], x) for x in a[1:])
    state = torch.get_rng_state()
    c = t(img)
    torch.set_rng_state(state)
    assert torch.equal(c, t(img))


def test_train_transform_with_generator_leaves_global_rng_alone():
    img = _noise()
    state = torch.get_rng_state()
    t1 = build_transform(SIZE, train=True, pad=3, generator=torch.Generator().manual_seed(1))
    t2 = build_transform(SIZE, train=True, pad=3, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(t1(img), t2(img)) for _ in range(5))
    assert torch.equal(state, torch.get_rng_state())


def test_flip_happens_sometimes():
    t = build_transform(SIZE, train=True, flip_p=0.5, pad=0, erase_p=0.0)
    img = _halves()
    torch.manual_seed(0)
    left_white = Counter(bool(t(img)[0, :, 0].mean() > 0) for _ in range(40))
    assert left_white[True] > 5 and left_white[False] > 5
    plain = build_transform(SIZE, train=False)(img)
    always = build_transform(SIZE, train=True, flip_p=1.0, pad=0, erase_p=0.0)(img)
    assert torch.equal(always, plain.flip(-1))
    never = build_transform(SIZE, train=True, flip_p=0.0, pad=0, erase_p=0.0)(img)
    assert torch.equal(never, plain)


def test_pad_and_crop_shift_with_black_border():
    t = build_transform(SIZE, train=True, flip_p=0.0, pad=4, erase_p=0.0)
    white = Image.new("RGB", SIZE[::-1], (255, 255, 255))
    black = _norm((0, 0, 0)).view(3)
    torch.manual_seed(1)
    shifted = 0
    for _ in range(20):
        x = t(white)
        is_black = torch.isclose(x, black.view(3, 1, 1).expand_as(x), atol=1e-5).all(0)
        rows, cols = is_black.all(1), is_black.all(0)
        assert is_black.sum() == x.shape[1] * x.shape[2] - (~rows).sum() * (~cols).sum()
        assert rows.sum() <= 4 and cols.sum() <= 4
        shifted += bool(is_black.any())
    assert shifted > 10


def test_random_erasing_fills_a_rectangle_with_zeros():
    t = build_transform(SIZE, train=True, flip_p=0.0, pad=0, erase_p=1.0)
    grey = _norm((90, 90, 90)).expand(3, *SIZE)
    torch.manual_seed(2)
    areas = []
    for _ in range(30):
        x = t(Image.new("RGB", SIZE[::-1], (90, 90, 90)))
        erased = (x == 0).all(0)
        assert torch.allclose(x[:, ~erased], grey[:, ~erased])
        ys, xs = torch.nonzero(erased, as_tuple=True)
        if len(ys):
            box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
            assert box == len(ys)                                # one solid rectangle
            areas.append(len(ys) / (SIZE[0] * SIZE[1]))
    assert len(areas) >= 20
    assert min(areas) >= 0.01 and max(areas) <= 0.4
    none = build_transform(SIZE, train=True, flip_p=0.0, pad=0, erase_p=0.0)
    assert torch.allclose(none(Image.new("RGB", SIZE[::-1], (90, 90, 90))), grey)


def test_transform_validation_and_pickling():
    for bad in [dict(image_size=(0, 4)), dict(image_size="ab"), dict(flip_p=2.0), dict(pad=-1),
                dict(erase_p=-0.1)]:
        kw = dict(image_size=SIZE, train=True) | bad
        size = kw.pop("image_size")
        with pytest.raises(ValueError):
            build_transform(size, **kw)
    t = build_transform(SIZE, train=True, pad=2)
    u = pickle.loads(pickle.dumps(t))
    img = _noise()
    torch.manual_seed(3)
    a = t(img)
    torch.manual_seed(3)
    assert torch.equal(a, u(img))
    with pytest.raises(TypeError):
        t(np.zeros((4, 4, 3), np.uint8))


def test_load_image(tmp_path):
    p = tmp_path / "rgba.png"
    Image.new("RGBA", (5, 7), (1, 2, 3, 4)).save(p)
    im = load_image(p)
    assert im.mode == "RGB" and im.size == (5, 7) and im.getpixel((0, 0)) == (1, 2, 3)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(OSError, match="broken.jpg"):
        load_image(bad)
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        load_image(tmp_path / "gone.jpg")


# ---------------------------------------------------------------------------- sampler

def _labels(sizes):
    """sizes[i] samples of identity 100 + i, interleaved."""
    out, left = [], list(sizes)
    while any(left):
        for i, n in enumerate(left):
            if n:
                out.append(100 + i)
                left[i] -= 1
    return out


def test_batches_are_p_identities_by_k_instances():
    labels = _labels([8] * 10 + [5, 2, 1, 6, 4, 4])
    s = IdentityBatchSampler(labels, batch_size=16, num_instances=4, seed=0)
    batches = list(s)
    assert len(batches) == len(s) > 0
    for b in batches:
        assert len(b) == 16
        ids = [labels[i] for i in b]
        groups = [ids[j:j + 4] for j in range(0, 16, 4)]
        assert all(len(set(g)) == 1 for g in groups)            # K of one identity, grouped
        assert len({g[0] for g in groups}) == 4                  # P distinct identities
    for b in batches:                                            # only short ids repeat a sample
        for j in range(0, 16, 4):
            chunk = b[j:j + 4]
            if len(set(chunk)) < 4:
                assert labels.count(labels[chunk[0]]) < 4


def test_epoch_covers_every_sample():
    labels = _labels([8, 4, 4, 8, 8, 4, 4, 8])                  # 12 chunks: 6 full batches
    s = IdentityBatchSampler(labels, batch_size=8, num_instances=4, seed=3)
    seen = Counter(i for b in s for i in b)
    assert set(seen) == set(range(len(labels))) and set(seen.values()) == {1}
    uneven = _labels([7, 5, 3, 9, 6, 2, 11, 4, 6, 6])
    s = IdentityBatchSampler(uneven, batch_size=12, num_instances=3, seed=1)
    seen = Counter(i for b in s for i in b)
    assert len(seen) >= 0.9 * len(uneven) and max(seen.values()) <= 3


def test_deterministic_per_seed_and_epoch():
    labels = _labels([6] * 20 + [3] * 5)
    a = IdentityBatchSampler(labels, 16, 4, seed=7)
    b = IdentityBatchSampler(labels, 16, 4, seed=7)
    torch.manual_seed(0)
    np.random.seed(0)
    first = list(a)
    torch.manual_seed(123)                                       # global RNG state is irrelevant
    np.random.seed(123)
    assert list(b) == first == list(a)
    a.set_epoch(1)
    second = list(a)
    assert second != first and len(second) == len(first)
    b.set_epoch(1)
    assert list(b) == second
    assert list(IdentityBatchSampler(labels, 16, 4, seed=8)) != first


def test_ddp_ranks_disjoint_and_equal_length():
    labels = _labels([4] * 37 + [9, 2, 5])
    full = list(IdentityBatchSampler(labels, 8, 4, seed=2))
    for world in (2, 3):
        ranks = [IdentityBatchSampler(labels, 8, 4, seed=2, rank=r, world_size=world) for r in range(world)]
        for r in ranks:
            r.set_epoch(0)
        per = [list(r) for r in ranks]
        assert len({len(p) for p in per}) == 1 and len(per[0]) == len(ranks[0]) == len(full) // world
        flat = [tuple(b) for p in per for b in p]
        assert len(set(flat)) == len(flat)                       # no batch on two ranks
        assert set(flat) <= {tuple(b) for b in full}
        assert per[1][0] == full[1] and per[0][1] == full[world]
    # drop_last=False: wrap around, still the same count on every rank
    ranks = [IdentityBatchSampler(labels, 8, 4, seed=2, rank=r, world_size=3, drop_last=False)
             for r in range(3)]
    lens = [len(list(r)) for r in ranks]
    assert len(set(lens)) == 1 and lens[0] == len(ranks[0])


def test_len_is_the_same_every_epoch():
    labels = _labels([1, 2, 3, 5, 7, 9, 13, 2, 2, 4, 4, 6])
    s = IdentityBatchSampler(labels, 12, 2, seed=0)
    n = len(s)
    for epoch in range(5):
        s.set_epoch(epoch)
        assert len(list(s)) == n


def test_fewer_identities_than_a_batch_needs():
    labels = _labels([8, 6, 5])                                  # 3 ids, a batch wants 8
    s = IdentityBatchSampler(labels, 32, 4, seed=0)
    batches = list(s)
    assert s.ids_per_batch == 3 and len(batches) == len(s) == 2
    for b in batches:
        assert len(b) == 12 and len({labels[i] for i in b}) == 3


def test_drop_last_false_keeps_leftovers():
    labels = _labels([12, 4, 4])
    keep = IdentityBatchSampler(labels, 8, 4, seed=0, drop_last=False)
    drop = IdentityBatchSampler(labels, 8, 4, seed=0)
    assert len(drop) == 2 and len(keep) == 3
    assert set(i for b in keep for i in b) == set(range(len(labels)))


def test_sampler_errors():
    labels = list(range(10))
    with pytest.raises(ValueError, match=r"batch_size \(10\).*num_instances \(4\)"):
        IdentityBatchSampler(labels, 10, 4)
    with pytest.raises(ValueError, match=r"batch_size \(4\).*at least 2 \* num_instances \(8\)"):
        IdentityBatchSampler(labels, 4, 4)
    with pytest.raises(ValueError, match="rank"):
        IdentityBatchSampler(labels, 8, 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="num_instances"):
        IdentityBatchSampler(labels, 8, 0)
    with pytest.raises(ValueError, match="seed"):
        IdentityBatchSampler(labels, 8, 4, seed=-1)
    empty = IdentityBatchSampler([], 8, 4)
    assert len(empty) == 0 and list(empty) == []


# ---------------------------------------------------------------------------- datasets

def _tokenize(texts):
    out = np.zeros((len(texts), 77), np.int32)
    for row, t in enumerate(texts):
        out[row, :len(t.split())] = [len(w) for w in t.split()]
    return out


@pytest.fixture
def entries(tmp_path):
    out = []
    for k, (pid, caps) in enumerate([(30, ("a red top", "red shirt and jeans")), (10, ("blue coat",)),
                                     (30, ("red again", "a red shirt"))]):
        p = tmp_path / f"{k}.png"
        Image.new("RGB", (10, 20), (k * 60, 20, 30)).save(p)
        out.append(ImageEntry(p, pid, caps, k))
    return out


def test_caption_dataset_items(entries):
    calls = []

    def tok(texts):
        calls.append(len(texts))
        return _tokenize(texts)

    ds = CaptionDataset(entries, tok, build_transform(SIZE, train=False))
    assert calls == [5] and len(ds) == 5
    assert ds.labels == [1, 1, 0, 1, 1]                           # pid 10 -> 0, pid 30 -> 1
    item = ds[2]
    assert set(item) == {"pixels", "ids", "label", "image_index"}
    assert item["pixels"].shape == (3, *SIZE) and item["pixels"].dtype == torch.float32
    assert item["ids"].shape == (77,) and item["ids"].dtype == torch.int32
    assert item["ids"][:2].tolist() == [4, 4]                    # "blue coat"
    assert item["label"].dtype == torch.int64 and item["label"].item() == 0
    assert item["image_index"].dtype == torch.int64 and item["image_index"].item() == 1
    assert ds[-1]["image_index"].item() == 2
    fixed = CaptionDataset(entries, _tokenize, build_transform(SIZE, train=False), {10: 5, 30: 2})
    assert fixed.labels == [2, 2, 5, 2, 2]
    with pytest.raises(ValueError, match="30"):
        CaptionDataset(entries, _tokenize, build_transform(SIZE, train=False), {10: 0})
    with pytest.raises(ValueError, match="tokenize"):
        CaptionDataset(entries, lambda t: np.zeros((2, 77)), build_transform(SIZE, train=False))


def test_caption_dataset_with_sampler_and_loader(entries):
    ds = CaptionDataset(entries, _tokenize, build_transform(SIZE, train=True, pad=2))
    sampler = IdentityBatchSampler(ds.labels, 4, 2, seed=0)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_sampler=sampler)))
    assert batch["pixels"].shape == (4, 3, *SIZE) and batch["ids"].shape == (4, 77)
    assert batch["label"].shape == (4,) and batch["label"].dtype == torch.int64
    assert sorted(set(batch["label"].tolist())) == [0, 1]


def test_image_dataset(entries):
    ds = ImageDataset(entries, build_transform(SIZE, train=False))
    assert len(ds) == 3
    item = ds[1]
    assert set(item) == {"pixels", "image_index"}
    assert item["pixels"].shape == (3, *SIZE) and item["image_index"].dtype == torch.int64
    assert item["image_index"].item() == 1 and ds[-1]["image_index"].item() == 2
    assert torch.allclose(item["pixels"], _norm((60, 20, 30)).expand(3, *SIZE), atol=1e-6)
    with pytest.raises(IndexError):
        ds[3]
