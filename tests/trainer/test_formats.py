"""Annotation readers of CUHK-PEDES, ICFG-PEDES and RSTPReid, on tiny fake copies."""
import json
import math

import pytest
from PIL import Image

from trainer.data.formats import (DatasetFormatError, ImageEntry, caption_samples, detect_format,
                                  load_dataset, pid_map)


def _img(path, colour=(200, 30, 30), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 12), colour).save(path, format=fmt)


def _write(root, ann_name, entries, images=()):
    root.mkdir(parents=True, exist_ok=True)
    for rel in images:
        _img(root / "imgs" / rel)
    (root / ann_name).write_text(json.dumps(entries), encoding="utf-8")
    return root


def _cuhk_entries():
    rows = [("train", 3, "cam_a/a.jpg"), ("train", 3, "cam_a/b.png"), ("train", 1, "cam_b/c.jpg"),
            ("val", 7, "CUHK01/d.jpg"), ("test", 9, "CUHK03/e.jpg"), ("test", 8, "CUHK03/f.jpg")]
    return [{"split": s, "captions": [f"a person {i}", f"someone wearing {i}"], "file_path": p,
             "id": pid, "processed_tokens": [["a", "person"], ["someone"]]}
            for i, (s, pid, p) in enumerate(rows)]


@pytest.fixture
def cuhk(tmp_path):
    entries = _cuhk_entries()
    return _write(tmp_path / "CUHK-PEDES", "reid_raw.json", entries, [e["file_path"] for e in entries])


def _icfg_entries(n_train_ids=10):
    out = []
    for pid in range(1, n_train_ids + 1):
        for k in range(2):
            out.append({"split": "train", "captions": [f"train person {pid} view {k}"],
                        "file_path": f"train/{pid:04d}/{pid:04d}_{k}.jpg", "id": pid,
                        "processed_tokens": [["x"]]})
    for pid in (101, 102):
        # a test image stored under imgs/train/: the split field decides, not the folder
        out.append({"split": "test", "captions": [f"test person {pid}"],
                    "file_path": f"train/{pid:04d}/{pid:04d}_0.jpg", "id": pid,
                    "processed_tokens": [["x"]]})
    return out


def _rstp_entries():
    rows = [("train", 0, "0000_c1_0001.jpg"), ("train", 0, "0000_c2_0002.jpg"),
            ("train", 5, "0005_c1_0001.jpg"), ("val", 6, "0006_c3_0001.jpg"),
            ("test", 7, "0007_c1_0001.jpg")]
    return [{"id": pid, "img_path": p, "captions": [f"first {p}", f"second {p}"], "split": s}
            for s, pid, p in rows]


# ---------------------------------------------------------------------------- parsing

def test_cuhk_pedes(cuhk):
    assert detect_format(cuhk) == "cuhk-pedes"
    d = load_dataset(cuhk)
    assert d.name == "cuhk-pedes" and d.root == cuhk.resolve()
    assert [len(d.train), len(d.val), len(d.test)] == [3, 1, 2]
    e = d.train[1]
    assert isinstance(e, ImageEntry)
    assert e.path == cuhk.resolve() / "imgs" / "cam_a" / "b.png" and e.path.is_absolute()
    assert e.pid == 3 and e.captions == ("a person 1", "someone wearing 1") and e.image_id == 1
    assert [x.image_id for x in d.test] == [0, 1] and [x.pid for x in d.test] == [9, 8]
    assert "own val split" in d.val_note and d.val[0].pid == 7
    assert d.split("test") is d.test and d.split("val") is d.val
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        d.split("dev")


def test_pid_map_and_caption_samples(cuhk):
    d = load_dataset(cuhk)
    assert pid_map(d.train) == {1: 0, 3: 1}
    assert pid_map(d.test) == {8: 0, 9: 1}
    samples = caption_samples(d.train)
    assert len(samples) == sum(len(e.captions) for e in d.train) == 6
    assert samples[0] == (0, "a person 0", 3) and samples[5] == (2, "someone wearing 2", 1)


@pytest.mark.parametrize("ann_name", ["ICFG-PEDES.json", "ICFG_PEDES.json"])
def test_icfg_pedes_holds_out_val_ids(tmp_path, ann_name):
    entries = _icfg_entries(10)
    root = _write(tmp_path / "ICFG", ann_name, entries, [e["file_path"] for e in entries])
    assert detect_format(root) == "icfg-pedes"
    d = load_dataset(root, val_fraction=0.2)
    assert d.name == "icfg-pedes"
    assert {e.pid for e in d.test} == {101, 102}          # split field, not the imgs/train folder
    train_ids, val_ids = {e.pid for e in d.train}, {e.pid for e in d.val}
    # ceil(0.2 * 10) = 2 ids; stride 10 // 2 = 5: the 5th and 10th pid in ascending order
    assert val_ids == {5, 10} and train_ids == set(range(1, 11)) - {5, 10}
    assert len(d.val) == 4 and len(d.train) == 16
    assert [e.image_id for e in d.val] == [0, 1, 2, 3] and [e.image_id for e in d.train] == list(range(16))
    assert "held out 2 of 10" in d.val_note and "every 5-th" in d.val_note
    again = load_dataset(root, val_fraction=0.2)
    assert again.val == d.val and again.train == d.train and again.val_note == d.val_note


@pytest.mark.parametrize("fraction,expected", [(0.05, 1), (0.01, 1), (0.25, 3), (0.5, 5), (0.99, 9)])
def test_icfg_hold_out_size(tmp_path, fraction, expected):
    entries = _icfg_entries(10)
    root = _write(tmp_path / "ICFG", "ICFG-PEDES.json", entries, [e["file_path"] for e in entries])
    d = load_dataset(root, val_fraction=fraction)
    val_ids, train_ids = {e.pid for e in d.val}, {e.pid for e in d.train}
    assert len(val_ids) == min(9, max(1, math.ceil(fraction * 10))) == expected
    assert val_ids and train_ids and not val_ids & train_ids


def test_icfg_prefers_dash_name_and_rejects_val_split(tmp_path):
    entries = _icfg_entries(3)
    root = _write(tmp_path / "ICFG", "ICFG-PEDES.json", entries, [e["file_path"] for e in entries])
    bad = [dict(entries[0], split="val")]
    (root / "ICFG_PEDES.json").write_text(json.dumps(bad))
    assert len(load_dataset(root).train) + len(load_dataset(root).val) == 6   # the dashed file wins
    (root / "ICFG-PEDES.json").unlink()
    with pytest.raises(DatasetFormatError, match=r"ICFG_PEDES\.json: entry 0: field 'split'.*'val'"):
        load_dataset(root)


def test_rstpreid(tmp_path):
    entries = _rstp_entries()
    root = _write(tmp_path / "RSTPReid", "data_captions.json", entries, [e["img_path"] for e in entries])
    assert detect_format(root) == "rstpreid"
    d = load_dataset(root)
    assert [len(d.train), len(d.val), len(d.test)] == [3, 1, 1]
    assert d.train[2].path == root.resolve() / "imgs" / "0005_c1_0001.jpg"
    assert d.train[0].pid == 0 and pid_map(d.train) == {0: 0, 5: 1}
    assert len(caption_samples(d.train)) == 6 and "own val split" in d.val_note


def test_reads_the_synthetic_writer(tmp_path):
    from trainer.data.synthetic import write_synthetic
    root = write_synthetic(tmp_path / "synth", ids=4, seed=0, image_size=(32, 16), progress=False)
    d = load_dataset(root)
    assert d.name == "cuhk-pedes" and d.train and d.val and d.test
    assert all(e.path.is_file() and len(e.captions) == 2 for e in d.train + d.val + d.test)


def test_cuhk_without_val_entries_holds_out_too(tmp_path):
    entries = [e for e in _cuhk_entries() if e["split"] != "val"]
    root = _write(tmp_path / "c", "reid_raw.json", entries, [e["file_path"] for e in entries])
    d = load_dataset(root)
    assert {e.pid for e in d.val} == {3} and {e.pid for e in d.train} == {1}
    assert "no val split" in d.val_note


# ---------------------------------------------------------------------------- errors

def test_detect_format_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        detect_format(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        detect_format(tmp_path / "empty")
    for name in ("reid_raw.json", "ICFG-PEDES.json", "ICFG_PEDES.json", "data_captions.json"):
        assert name in str(err.value)
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        detect_format(tmp_path / "f")
    both = tmp_path / "both"
    both.mkdir()
    (both / "reid_raw.json").write_text("[]")
    (both / "data_captions.json").write_text("[]")
    with pytest.raises(DatasetFormatError, match="several datasets"):
        detect_format(both)


def test_invalid_json_names_file_and_position(cuhk):
    (cuhk / "reid_raw.json").write_text('[{"split": "train",\n  "id": 1,, }]')
    with pytest.raises(DatasetFormatError, match=r"reid_raw\.json: invalid JSON at line 2 column 11"):
        load_dataset(cuhk)


def test_top_level_must_be_a_list(cuhk):
    (cuhk / "reid_raw.json").write_text('{"split": "train"}')
    with pytest.raises(DatasetFormatError, match="JSON list"):
        load_dataset(cuhk)


def test_bad_val_fraction(cuhk):
    for f in (0, 1, -0.1, 1.5, "0.1"):
        with pytest.raises(ValueError, match="val_fraction"):
            load_dataset(cuhk, val_fraction=f)


_BAD = [  # (mutation of entry 1, field named in the message, text in the message)
    (lambda e: e.pop("captions"), "captions", "missing"),
    (lambda e: e.pop("id"), "id", "missing"),
    (lambda e: e.pop("split"), "split", "missing"),
    (lambda e: e.pop("file_path"), "file_path", "missing"),
    (lambda e: e.update(id="3"), "id", "expected an integer, got '3'"),
    (lambda e: e.update(id=True), "id", "expected an integer"),
    (lambda e: e.update(id=3.0), "id", "expected an integer, got 3.0"),
    (lambda e: e.update(captions=[]), "captions", "non-empty list"),
    (lambda e: e.update(captions="a person"), "captions", "non-empty list"),
    (lambda e: e.update(captions=[" ", ""]), "captions", "every caption is blank"),
    (lambda e: e.update(captions=["ok", 5]), "captions", "caption 1 must be a string, got 5"),
    (lambda e: e.update(split="training"), "split", "got 'training'"),
    (lambda e: e.update(split=None), "split", "got None"),
    (lambda e: e.update(file_path=17), "file_path", "string path, got 17"),
    (lambda e: e.update(file_path="cam_a/missing.jpg"), "file_path", "missing.jpg does not exist"),
]


@pytest.mark.parametrize("mutate,field,text", _BAD, ids=[f"{f}-{t[:20]}" for _, f, t in _BAD])
def test_entry_errors_name_file_index_field(tmp_path, mutate, field, text):
    entries = _cuhk_entries()
    root = _write(tmp_path / "c", "reid_raw.json", entries, [e["file_path"] for e in entries])
    mutate(entries[1])
    (root / "reid_raw.json").write_text(json.dumps(entries))
    with pytest.raises(DatasetFormatError) as err:
        load_dataset(root)
    msg = str(err.value)
    assert str(root.resolve() / "reid_raw.json") in msg
    assert "entry 1:" in msg and f"field '{field}'" in msg and text in msg


def test_rstpreid_errors_name_img_path(tmp_path):
    entries = _rstp_entries()
    root = _write(tmp_path / "r", "data_captions.json", entries, [e["img_path"] for e in entries])
    entries[3]["file_path"] = entries[3].pop("img_path")
    (root / "data_captions.json").write_text(json.dumps(entries))
    with pytest.raises(DatasetFormatError, match=r"data_captions\.json: entry 3: field 'img_path': missing"):
        load_dataset(root)


def test_entry_not_an_object(cuhk):
    entries = _cuhk_entries()
    entries[2] = ["train", 1]
    (cuhk / "reid_raw.json").write_text(json.dumps(entries))
    with pytest.raises(DatasetFormatError, match="entry 2: expected an object, got list"):
        load_dataset(cuhk)


def test_check_images_false_skips_existence(tmp_path):
    entries = _cuhk_entries()
    root = _write(tmp_path / "c", "reid_raw.json", entries)          # no images at all
    with pytest.raises(DatasetFormatError, match="images folder"):
        load_dataset(root)
    d = load_dataset(root, check_images=False)
    assert len(d.train) == 3 and not d.train[0].path.exists()


def test_blank_captions_are_dropped_with_a_warning(tmp_path):
    entries = _cuhk_entries()
    entries[1]["captions"] = ["a man in red", "  "]
    root = _write(tmp_path / "c", "reid_raw.json", entries, [e["file_path"] for e in entries])
    with pytest.warns(UserWarning, match=r"reid_raw\.json: dropped 1 blank caption\(s\) \(entries 1\)"):
        data = load_dataset(root)
    every = [c for s in ("train", "val", "test") for e in data.split(s) for c in e.captions]
    assert "a man in red" in every and all(c.strip() for c in every)
