"""Part-of-speech tags for SEN's pruning augmentation: keep a caption's pronouns, nouns and adjectives.

SEN (Liu et al., 2023) replaces a training caption, with probability 0.2, by only its pronouns,
nouns and adjectives ("a woman in a red coat carrying a black bag" -> "woman red coat black bag").
The tags come from NLTK's averaged-perceptron tagger when nltk and its tagger data are installed.
Its data cannot be downloaded everywhere (not here, not in CI), so otherwise a built-in tagger is
used: a lexicon of the closed word classes (determiners, prepositions, conjunctions, pronouns,
auxiliaries and the verbs of pedestrian descriptions) and of the open-class words such
descriptions are made of (garments, colours, body parts, accessories), then suffix rules for
unknown words (-ly adverb; -ing verb; -ed, -ful, -ous, -ish, -less, -y adjective) and noun by
default, since an unknown word in a pedestrian description is most often an object. Its tags are
the Penn Treebank tags NLTK gives, coarsened (NN, NNS, JJ, PRP, PRP$, DT, IN, CC, VB*, RB, CD).
"""
from __future__ import annotations

from functools import lru_cache

import regex

__all__ = ["tag", "prune_caption", "tagger_name", "KEEP_PREFIXES"]

KEEP_PREFIXES = ("NN", "JJ", "PRP")  # nouns, adjectives, pronouns (PRP$ included)
_WORD = regex.compile(r"[\p{L}\p{N}]+(?:['\-][\p{L}\p{N}]+)*")


def _words(*groups: str) -> set[str]:
    return {w for g in groups for w in g.split()}


_CLOSED = {
    "DT": _words("a an the this that these those each every some any no another both either all"),
    "IN": _words("in on at of with without for from to into onto over under above below behind near "
                 "by through across along around about against between beside down up past off out "
                 "like while as than upon towards toward via inside outside underneath beneath"),
    "CC": _words("and or but nor yet so plus"),
    "PRP": _words("he she it they i we you him her them me us himself herself itself themselves"),
    "PRP$": _words("his its their my our your hers"),
    "VB": _words("is are was were be been being am has have had do does did can could may might "
                 "will would shall should must seems seem appears appear looks look wears wear "
                 "wore worn carries carry carried holds hold held walks walk walked goes go "
                 "stands stand stood dressed hangs hang falls fall covers covered"),
    "RB": _words("also very not just too slightly quite rather really there here then away straight "
                 "ahead maybe perhaps possibly somewhat almost mostly mainly only even still"),
    "WDT": _words("who which whose whom what where when"),
    "CD": _words("one two three four five six seven eight nine ten"),
}
# Open-class words of pedestrian descriptions whose suffix would mislead the rules (clothing, earring)
# or that are adjectives the default would call nouns (colours, sizes, builds).
_ADJECTIVES = _words(
    "red orange yellow green blue purple violet pink brown black white grey gray beige tan navy "
    "khaki maroon golden silver dark light pale bright colorful colourful multicolored striped "
    "plaid checkered patterned floral solid plain short long tall small large big little thin thick "
    "slim slender stocky heavy heavy-set broad-shouldered young old elderly middle-aged blonde blond "
    "curly straight bald wavy loose tight baggy fitted casual formal knee-length ankle-length "
    "sleeveless short-sleeved long-sleeved high low open closed zip-up button-up collared hooded "
    "denim leather wooden cotton wool woolen knit mobile cell left right front back other same "
    "skinny fat overweight male female single double half full new")
_NOUNS = _words(
    "clothing clothes earring earrings stocking stockings legging leggings stripes pants jeans "
    "shorts trousers shoes sneakers trainers glasses sunglasses slacks boots sandals heels socks "
    "hair head face arm arms hand hands leg legs shoulder shoulders back feet foot knee knees waist "
    "shirt t-shirt tee top jacket coat overcoat hoodie sweatshirt sweater dress skirt vest scarf "
    "hat cap beanie bag backpack rucksack handbag purse umbrella phone belt watch ponytail "
    "man woman guy lady girl boy person pedestrian kid child people "
    "street road building camera picture photo image background sleeves sleeve pair color colour")


def _builtin_tag(word: str) -> str:
    for t, vocab in _CLOSED.items():
        if word in vocab:
            return t
    if word in _ADJECTIVES:
        return "JJ"
    if word in _NOUNS:
        return "NNS" if word.endswith("s") and not word.endswith("ss") else "NN"
    if word.isdigit():
        return "CD"
    if word.endswith("ly"):
        return "RB"
    if word.endswith("ing"):
        return "VBG"
    if word.endswith(("ed", "ful", "ous", "ish", "less", "ive", "y")):
        return "JJ"
    if word.endswith("s") and not word.endswith(("ss", "us")) and len(word) > 3:
        return "NNS"
    return "NN"


@lru_cache(maxsize=1)
def _nltk_pos_tag():
    """NLTK's pos_tag if nltk and its tagger data are installed, else None."""
    try:
        import nltk
        nltk.pos_tag(["a", "test"])
        return nltk.pos_tag
    except (ImportError, LookupError):
        return None


def tagger_name() -> str:
    return "nltk" if _nltk_pos_tag() is not None else "builtin"


def tag(text: str) -> list[tuple[str, str]]:
    """(word, Penn tag) pairs of a lower-cased caption; punctuation is dropped."""
    words = _WORD.findall(text.lower())
    nltk_tag = _nltk_pos_tag()
    if nltk_tag is not None:
        return [(w, t) for w, t in nltk_tag(words)]
    return [(w, _builtin_tag(w)) for w in words]


def prune_caption(text: str) -> str:
    """The caption's pronouns, nouns and adjectives, in order (SEN's pruning augmentation).
    A caption with none of them is returned unchanged rather than emptied."""
    kept = [w for w, t in tag(text) if t.startswith(KEEP_PREFIXES)]
    return " ".join(kept) if kept else text
