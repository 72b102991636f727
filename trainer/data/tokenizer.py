"""The project's one tokenizer: OpenAI CLIP's byte-level BPE, and a trainer for small vocabularies.

`Tokenizer` reproduces `clip/simple_tokenizer.py` id for id (same clean-up, same pre-tokenisation
pattern, same byte-to-unicode table, same `</w>` end-of-word marker, same merge-by-rank loop), so a
model trained here reads text exactly like CLIP and the genuine CLIP weights can be used as is.

Merges files use CLIP's format (gzipped or plain): a header line containing "#version", then one
merge "left right" per line, in rank order. The vocabulary is derived from the merges:

    256 byte symbols, the same 256 with "</w>", one token per merge, <|startoftext|>, <|endoftext|>

`train_bpe` learns such a file from captions with the HF `tokenizers` BPE trainer, feeding it the
very words `Tokenizer` would split the text into, so the learned merges apply the same way here.
"""
from __future__ import annotations

import gzip
import html
import io
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import ftfy
import numpy as np
import regex

__all__ = ["CONTEXT_LENGTH", "Tokenizer", "train_bpe", "clean_text"]

CONTEXT_LENGTH = 77
# CLIP reads lines 1 .. 49152-256-2 of its merges file: 48894 merges, hence a 49408-token vocabulary.
MAX_MERGES = 49152 - 256 - 2
EOW = "</w>"
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
N_BASE = 2 * 256           # byte symbols, with and without EOW
N_SPECIAL = 2              # SOT, EOT
_HEADER = "#version: 0.2"  # what CLIP's and HF's merges files start with

# CLIP's pre-tokenisation (compiled with IGNORECASE in CLIP; kept, although the text is already
# lower-cased, so that the matches are identical): the two special tokens, English contractions,
# runs of letters, single digits, runs of anything else that is not whitespace.
_PAT = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE)
_WS = regex.compile(r"\s+")
# Words are cached after BPE; the cache is cleared when it reaches this size so that a long-running
# server fed arbitrary text cannot grow it without bound (CLIP's never shrinks).
_CACHE_MAX = 100_000


@lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible byte -> printable character table.

    BPE works on strings, and merges files are whitespace-separated text, so each of the 256 bytes
    is given a visible, non-whitespace character: printable Latin-1 bytes stand for themselves, the
    other 68 (control characters, space, NBSP, soft hyphen, ...) are moved to U+0100 onwards. The
    insertion order of this dict is the order of the first 256 vocabulary ids.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    moved = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + i) for i, b in enumerate(moved)})
    return table


_BYTE_ENCODER = bytes_to_unicode()
_BYTE_DECODER = {c: b for b, c in _BYTE_ENCODER.items()}


def clean_text(text: str) -> str:
    """CLIP's clean-up: fix mojibake, unescape HTML (twice, for doubly escaped "&amp;amp;"),
    collapse whitespace runs into one space, lower-case."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WS.sub(" ", text).strip().lower()


def _words(text: str) -> list[str]:
    """The pre-tokens of a text, each written with the byte characters of `bytes_to_unicode`."""
    return ["".join(_BYTE_ENCODER[b] for b in w.encode("utf-8")) for w in _PAT.findall(clean_text(text))]


def _read_merges(path: Path) -> list[tuple[str, str]]:
    """The merges of a CLIP-format file (at most MAX_MERGES), validated line by line."""
    if not path.is_file():
        raise FileNotFoundError(f"BPE merges file not found (or not a file): {path}")
    raw = path.read_bytes()
    try:
        # Detect gzip by its magic number rather than the name: checkpoints store the file under a
        # fixed name whatever its compression.
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable (gzipped) UTF-8 BPE merges file: {e}") from e
    lines = text.rstrip("\r\n").split("\n")
    if not text.strip():
        raise ValueError(f"{path}: line 1: empty BPE merges file (expected a '#version' header)")
    if "#version" not in lines[0]:
        raise ValueError(f"{path}: line 1: expected a '#version' header, got {lines[0][:80]!r}")
    known = set(_BYTE_ENCODER.values()) | {c + EOW for c in _BYTE_ENCODER.values()}
    merges = []
    for lineno, line in enumerate(lines[1:MAX_MERGES + 1], start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}: line {lineno}: expected two space-separated symbols, got {line[:80]!r}")
        # A merge may only join symbols that exist by then; anything else is a corrupt file.
        if parts[0] not in known or parts[1] not in known:
            raise ValueError(f"{path}: line {lineno}: merge {line[:80]!r} uses a symbol that no earlier "
                             "line creates")
        known.add(parts[0] + parts[1])
        merges.append((parts[0], parts[1]))
    return merges


class Tokenizer:
    """CLIP BPE tokenizer over a merges file; `tok(texts)` gives the int32 [B, context_length] ids."""

    pad_id: int = 0  # CLIP pads with 0 (which is also the id of "!" inside a word; see `decode`)

    def __init__(self, merges_path: str | os.PathLike, context_length: int = CONTEXT_LENGTH):
        if not isinstance(context_length, int) or context_length < 2:
            raise ValueError(f"context_length must be an int >= 2 (room for start and end), got {context_length!r}")
        self.merges_path = Path(merges_path)
        self.context_length = context_length
        merges = _read_merges(self.merges_path)
        byte_chars = list(_BYTE_ENCODER.values())
        self._vocab = byte_chars + [c + EOW for c in byte_chars] + ["".join(m) for m in merges] + [SOT, EOT]
        # dict(zip(...)) as in CLIP: should a token or pair repeat, the later id/rank wins.
        self._encoder = {tok: i for i, tok in enumerate(self._vocab)}
        self._ranks = {pair: r for r, pair in enumerate(merges)}
        self.vocab_size = len(self._vocab)
        self.sot_id = self.vocab_size - 2
        self.eot_id = self.vocab_size - 1
        self._cache: dict[str, tuple[str, ...]] = {}

    def __repr__(self) -> str:
        return (f"Tokenizer({str(self.merges_path)!r}, context_length={self.context_length}, "
                f"vocab_size={self.vocab_size})")

    def _bpe(self, word: str) -> tuple[str, ...]:
        """Split one byte-encoded pre-token into vocabulary symbols by applying merges by rank."""
        if word in (SOT, EOT):  # CLIP lets the literal special-token strings through as themselves
            return (word,)
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        # The end-of-word marker is glued to the last character, so "a" at the end of a word and
        # "a" inside one are different symbols.
        symbols = list(word[:-1]) + [word[-1] + EOW]
        ranks = self._ranks
        while len(symbols) > 1:
            # The lowest-ranked (earliest learned) adjacent pair present in the word is merged next.
            pairs = set(zip(symbols, symbols[1:]))
            best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if best not in ranks:
                break
            first, second = best
            merged, i = [], 0
            while i < len(symbols):  # merge every non-overlapping occurrence, left to right
                if i < len(symbols) - 1 and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        result = tuple(symbols)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[word] = result
        return result

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without the start/end tokens."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return [self._encoder[s] for w in _words(text) for s in self._bpe(w)]

    def decode(self, ids) -> str:
        """Text of a sequence of ids (a list, a 1-D array or tensor, or a row of `__call__`).

        Start/end tokens are dropped, and so are trailing zeros (padding). Other zeros are kept:
        id 0 is also "!" inside a word (e.g. in "!!!"), but a word never ends with it (its last
        symbol always carries "</w>"), so only padding can end a sequence with 0.
        Words come back separated by single spaces: CLIP's pre-tokenisation does not keep where the
        spaces were, so "red,blue" and "red , blue" both decode to "red , blue".
        """
        ids = [i for i in map(int, ids) if i not in (self.sot_id, self.eot_id)]
        while ids and ids[-1] == self.pad_id:
            ids.pop()
        out = bytearray()
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
            tok = self._vocab[i]
            end = tok.endswith(EOW)
            out += bytes(_BYTE_DECODER[c] for c in (tok[:-len(EOW)] if end else tok))
            if end:
                out += b" "
        return out.decode("utf-8", errors="replace").rstrip(" ")

    def __call__(self, texts: str | Sequence[str], longest: bool = False, multiple_of: int = 1) -> np.ndarray:
        """int32 [B, context_length]: start, ids, end, then 0-padding. Like OpenAI's
        `clip.tokenize(truncate=True)`, a text too long is cut and its last position set to end.

        `longest=True` pads to the longest text of the batch instead (rounded up to a multiple of
        `multiple_of`, at most context_length): [B, T] with T <= context_length, the same rows
        cut short. What serving feeds an encoder with a dynamic token axis (captions are ~20-30
        tokens of 77); the padding buckets (`multiple_of`) keep requests of similar length
        batchable together. Training keeps the full context (the default)."""
        if not isinstance(multiple_of, int) or multiple_of < 1:
            raise ValueError(f"multiple_of must be an int >= 1, got {multiple_of!r}")
        if isinstance(texts, str):
            texts = [texts]
        elif isinstance(texts, (bytes, bytearray, memoryview)) or not isinstance(texts, Iterable):
            raise TypeError(f"texts must be a str or a sequence of str, got {type(texts).__name__}")
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"texts must be a str or a sequence of str, found a {type(t).__name__} in it")
        rows = []
        for text in texts:
            ids = [self.sot_id, *self.encode(text), self.eot_id]
            if len(ids) > self.context_length:
                ids = ids[:self.context_length]
                ids[-1] = self.eot_id  # models pool at the end token: it must survive truncation
            rows.append(ids)
        width = self.context_length
        if longest:
            longest_row = max(map(len, rows), default=2)
            width = min(self.context_length, -(-longest_row // multiple_of) * multiple_of)
        out = np.full((len(texts), width), self.pad_id, dtype=np.int32)
        for row, ids in enumerate(rows):
            out[row, :len(ids)] = ids
        return out


def _write_merges(merges: list[tuple[str, str]], out_path: Path) -> None:
    """Write a CLIP-format merges file, atomically; gzipped (reproducibly) if the name ends in .gz."""
    data = (_HEADER + "\n" + "".join(f"{a} {b}\n" for a, b in merges)).encode("utf-8")
    if out_path.name.endswith(".gz"):
        # mtime=0 and no file name in the header: the same merges give the same bytes.
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
            gz.write(data)
        data = buf.getvalue()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=out_path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def train_bpe(captions: Iterable[str], vocab_size: int, out_path: str | os.PathLike) -> Path:
    """Learn `vocab_size - 514` merges from captions and write them as a CLIP-format merges file.

    `vocab_size` counts everything, as `Tokenizer.vocab_size` does (512 byte symbols + merges + 2
    specials). A corpus too small to support that many merges gives fewer (the trainer stops when
    every word is a single symbol); `Tokenizer(out_path).vocab_size` is the size actually obtained.
    The result depends only on the multiset of captions.
    """
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, models, pre_tokenizers, trainers

    if not isinstance(vocab_size, int) or not N_BASE + N_SPECIAL <= vocab_size <= N_BASE + MAX_MERGES + N_SPECIAL:
        raise ValueError(f"vocab_size must be an int in [{N_BASE + N_SPECIAL}, "
                         f"{N_BASE + MAX_MERGES + N_SPECIAL}], got {vocab_size!r}")
    out_path = Path(out_path)
    n_merges = vocab_size - N_BASE - N_SPECIAL

    # The trainer sees exactly Tokenizer's words: each caption is cleaned and pre-tokenised here,
    # each word spelled with the byte characters (none of which is whitespace), and the words joined
    # by spaces for HF's WhitespaceSplit to separate again. No HF normaliser: nothing else changes.
    def corpus():
        for c in captions:
            if not isinstance(c, str):
                raise TypeError(f"captions must be str, found a {type(c).__name__}")
            yield " ".join(w for w in _words(c) if w not in (SOT, EOT))

    byte_chars = list(_BYTE_ENCODER.values())
    # Determinism: HF breaks ties between equally frequent pairs by symbol id, and it numbers the
    # end-of-word symbols ("a</w>") in hash-map order, which changes from run to run. Declaring those
    # 256 symbols as "special tokens" gives them fixed ids first (the specials are only used to
    # number the vocabulary; they never appear in the words), and `initial_alphabet` fixes the ids
    # of the plain byte symbols (sorted by code point). The base vocabulary is then exactly CLIP's
    # 512 symbols, so HF's vocab_size of 512 + n_merges means n_merges new tokens.
    trainer = trainers.BpeTrainer(
        vocab_size=N_BASE + n_merges,
        min_frequency=0,
        show_progress=False,
        special_tokens=[AddedToken(c + EOW, special=True, normalized=False) for c in byte_chars],
        initial_alphabet=byte_chars,
        end_of_word_suffix=EOW,
    )
    hf = HFTokenizer(models.BPE(end_of_word_suffix=EOW))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf.train_from_iterator(corpus(), trainer=trainer)

    raw = json.loads(hf.to_str())["model"]["merges"]
    # tokenizers >= 0.20 serialises merges as [left, right] pairs, older versions as "left right".
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in raw]
    # HF counts distinct tokens, and a merge can re-create an existing token by another route;
    # CLIP's format gives every merge an id, so keep exactly the first n_merges (training is
    # sequential: they are what a run stopped at n_merges would have learned).
    merges = merges[:n_merges]
    _write_merges(merges, out_path)
    return out_path
