"""The synthetic CUHK-PEDES-format dataset and the colour-histogram baseline."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.data.synthetic import (ATTRIBUTE_WORDS, PALETTE, sample_person, tokenize_caption,
                                    write_synthetic)
from trainer.data.synthetic.captions import _caption
from trainer.data.synthetic.colour_baseline import (COLOUR_WORDS, caption_colours,
                                                    colour_histogram_scores)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("s") / "d", ids=12, seed=5, progress=False)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """200 people at the default size: the benchmark's dataset."""
    return write_synthetic(tmp_path_factory.mktemp("b") / "d", ids=200, seed=0, progress=False)


def _entries(root):
    return json.loads((Path(root) / "reid_raw.json").read_text())


def test_same_seed_same_bytes_other_seed_other_people(small, tmp_path):
    again = write_synthetic(tmp_path / "again", ids=12, seed=5, progress=False)
    assert (again / "reid_raw.json").read_bytes() == (small / "reid_raw.json").read_bytes()
    for e in _entries(small):
        assert (again / "imgs" / e["file_path"]).read_bytes() == \
            (small / "imgs" / e["file_path"]).read_bytes()
    other = write_synthetic(tmp_path / "other", ids=12, seed=6, progress=False)
    assert (other / "reid_raw.json").read_bytes() != (small / "reid_raw.json").read_bytes()
    ea, eb = _entries(small), _entries(other)
    assert [e["captions"] for e in ea] != [e["captions"] for e in eb]
    shared = {e["file_path"] for e in ea} & {e["file_path"] for e in eb}
    assert shared and all((small / "imgs" / f).read_bytes() != (other / "imgs" / f).read_bytes()
                          for f in shared)


def test_cuhk_pedes_format(small):
    entries = _entries(small)
    assert isinstance(entries, list) and entries
    pids_by_split = {"train": set(), "val": set(), "test": set()}
    for e in entries:
        assert set(e) == {"split", "captions", "file_path", "id", "processed_tokens"}
        assert e["split"] in pids_by_split
        assert isinstance(e["id"], int) and 1 <= e["id"] <= 12
        pids_by_split[e["split"]].add(e["id"])
        assert len(e["captions"]) == 2 and all(isinstance(c, str) and c for c in e["captions"])
        assert e["processed_tokens"] == [tokenize_caption(c) for c in e["captions"]]
        assert all(t == t.lower() for toks in e["processed_tokens"] for t in toks)
        assert e["file_path"].startswith("synth/") and e["file_path"].endswith(".jpg")
        path = small / "imgs" / e["file_path"]
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (48, 128)  # W x H
    assert len({e["file_path"] for e in entries}) == len(entries)
    # splits by identity: disjoint, all present, covering ids 1..12
    tr, va, te = pids_by_split["train"], pids_by_split["val"], pids_by_split["test"]
    assert tr and va and te and not (tr & va or tr & te or va & te)
    assert tr | va | te == set(range(1, 13))
    per_id = np.bincount([e["id"] for e in entries])[1:]
    assert per_id.min() >= 3 and per_id.max() <= 5


def test_split_proportions_and_sizes(tmp_path):
    root = write_synthetic(tmp_path / "d", ids=3, seed=0, image_size=(64, 24),
                           images_per_id=(1, 2), progress=False)
    entries = _entries(root)
    assert sorted({(e["split"], e["id"]) for e in entries}) == [("test", 3), ("train", 1),
                                                                ("val", 2)]
    with Image.open(root / "imgs" / entries[0]["file_path"]) as im:
        assert im.size == (24, 64)


def test_split_proportions_200(big):
    ids = {}
    for e in _entries(big):
        ids.setdefault(e["split"], set()).add(e["id"])
    assert {k: len(v) for k, v in ids.items()} == {"train": 140, "val": 20, "test": 40}


def test_captions_vary_and_mention_attributes(small):
    entries = _entries(small)
    by_id = {}
    for e in entries:
        for toks in e["processed_tokens"]:
            assert ATTRIBUTE_WORDS & set(toks), toks
        assert e["captions"][0] != e["captions"][1]
        by_id.setdefault(e["id"], []).extend(e["captions"])
    for caps in by_id.values():
        assert len(set(caps)) == len(caps)       # no two captions of a person are identical
    all_caps = [c for caps in by_id.values() for c in caps]
    # synonyms and distractors show up somewhere across a few hundred captions
    words = {t for c in all_caps for t in tokenize_caption(c)}
    assert len(words) > 80


def test_captions_tell_the_truth():
    """Colour words name the person's colours; garment words name the person's garments."""
    rng = np.random.default_rng(0)
    garment_words = {"t-shirt": {"t-shirt", "tee"}, "shirt": {"shirt"}, "jacket": {"jacket"},
                     "hoodie": {"hoodie", "sweatshirt"}, "coat": {"coat", "overcoat"},
                     "dress": {"dress"}, "jeans": {"jeans"}, "trousers": {"trousers", "pants", "slacks"},
                     "shorts": {"shorts"}, "skirt": {"skirt"}}
    mentioned_upper = 0
    for _ in range(60):
        p = sample_person(rng)
        allowed = {p.upper_colour, p.upper_colour2, p.lower_colour, p.shoes_colour}
        allowed |= {p.bag_colour} if p.bag != "none" else set()
        allowed |= {p.hat_colour} if p.hat != "none" else set()
        allowed |= {p.carry_colour} if p.carry == "umbrella" else set()
        allowed |= {"yellow" if p.hair_colour == "blonde" else p.hair_colour}
        for _ in range(5):
            cap = _caption(p, rng, "front")
            toks = set(tokenize_caption(cap))
            named = {n for n in PALETTE if caption_colours(cap)[list(PALETTE).index(n)]}
            assert named <= allowed, (cap, p)
            for g, ws in garment_words.items():
                if toks & ws and g not in (p.upper, p.lower):
                    # "shirt" also appears in "tee shirt"/"sweatshirt" style phrases
                    assert g == "shirt" and p.upper in ("t-shirt", "hoodie"), (cap, p)
            mentioned_upper += bool(toks & garment_words[p.upper])
            if p.bag == "none":
                assert not toks & {"backpack", "rucksack", "handbag", "purse"}, cap
    assert 150 < mentioned_upper < 300           # often, not always


def test_refuses_to_overwrite(small, tmp_path):
    with pytest.raises(FileExistsError, match="reid_raw.json"):
        write_synthetic(small, ids=12, seed=5, progress=False)
    root = write_synthetic(tmp_path / "d", ids=6, seed=1, images_per_id=(4, 4), progress=False)
    before = len(list((root / "imgs" / "synth").glob("*.jpg")))
    root = write_synthetic(root, ids=3, seed=1, images_per_id=(1, 1), progress=False,
                           overwrite=True)
    assert before == 24 and len(list((root / "imgs" / "synth").glob("*.jpg"))) == 3
    assert all((root / "imgs" / e["file_path"]).is_file() for e in _entries(root))


@pytest.mark.parametrize("kw", [dict(ids=2), dict(ids=0), dict(ids=12, image_size=(8, 4)),
                                dict(ids=12, images_per_id=(3, 2)),
                                dict(ids=12, images_per_id=(0, 2)), dict(ids=12, seed=-1)])
def test_bad_arguments(kw, tmp_path):
    with pytest.raises(ValueError):
        write_synthetic(tmp_path / "d", progress=False, **kw)
    assert not (tmp_path / "d" / "reid_raw.json").exists()


def test_colour_baseline_beats_chance_but_not_the_task(big):
    assert {"black", "white", "grey", "gray", "red", "blue", "green", "yellow", "orange", "pink",
            "purple", "brown"} <= set(COLOUR_WORDS)
    test = [e for e in _entries(big) if e["split"] == "test"]
    captions = [c for e in test for c in e["captions"]]
    qp = np.array([e["id"] for e in test for _ in e["captions"]])
    gp = np.array([e["id"] for e in test])
    scores = colour_histogram_scores(captions, [big / "imgs" / e["file_path"] for e in test])
    assert scores.shape == (len(captions), len(test)) and scores.dtype == np.float32
    r1 = float((gp[scores.argmax(1)] == qp).mean())
    chance = float(np.mean([(gp == p).mean() for p in qp]))   # expected R@1 of a random ranking
    print(f"colour baseline R@1 {100 * r1:.1f}% vs chance {100 * chance:.1f}%")
    assert r1 > 3 * chance
    assert r1 < 0.4


def test_colour_baseline_scores_named_colours():
    """An all-red image beats an all-blue one for "a red coat", and vice versa."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for name in ("red", "blue", "grey"):
            p = Path(d) / f"{name}.png"
            Image.new("RGB", (24, 64), PALETTE[name]).save(p)
            paths.append(p)
        s = colour_histogram_scores(["a man in a red coat", "blue jeans", "A gray hoodie",
                                     "nothing here"], paths)
    assert s.argmax(1)[:3].tolist() == [0, 1, 2]
    assert np.all(s[3] == 0)
