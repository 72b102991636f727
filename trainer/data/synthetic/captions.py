"""The caption grammar: a random subset of a person's attributes, in varied words.

Every draw comes from the caller's generator in a fixed order (the order of ``_phrases``'s keys,
then of the sentences), so a caption is a pure function of the person and the generator state.
"""
from __future__ import annotations

import re

import numpy as np

from trainer.data.synthetic.attributes import _NAMES, Person, _pick

# Words a caption uses for attributes (tests check every caption names at least one).
ATTRIBUTE_WORDS = frozenset(
    _NAMES + ["gray", "violet", "blonde", "blond", "hair", "bald", "ponytail", "cap", "beanie",
              "hat", "t-shirt", "tee", "shirt", "jacket", "hoodie", "sweatshirt", "coat",
              "overcoat", "dress", "trousers", "pants", "slacks", "jeans", "shorts", "skirt",
              "shoes", "sneakers", "trainers", "backpack", "rucksack", "handbag", "purse", "bag",
              "umbrella", "phone", "sleeves", "short-sleeved", "long-sleeved", "sleeveless",
              "striped", "stripes", "slim", "thin", "slender", "stocky", "broad-shouldered",
              "heavy-set"])

_TOKEN = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


def tokenize_caption(caption: str) -> list[str]:
    """Lower-case word tokens, as CUHK-PEDES's ``processed_tokens`` ("t-shirt" stays whole)."""
    return _TOKEN.findall(caption.lower())


# ----------------------------------------------------------------------------- phrases

_COLOUR_P = 0.9                    # annotators sometimes drop the colour
_UPPER_NOUNS = {"t-shirt": ["t-shirt", "tee", "t-shirt", "tee shirt"],
                "shirt": ["shirt", "button-up shirt", "shirt", "collared shirt"],
                "jacket": ["jacket", "zip-up jacket", "jacket"],
                "hoodie": ["hoodie", "hooded sweatshirt", "hoodie", "sweatshirt"],
                "coat": ["coat", "long coat", "overcoat"],
                "dress": ["dress", "dress", "knee-length dress"]}
_LOWER_NOUNS = {"trousers": ["trousers", "pants", "slacks", "pants"],
                "jeans": ["jeans", "jeans", "denim jeans"],
                "shorts": ["shorts"]}
_HAT_NOUNS = {"cap": ["cap", "baseball cap"], "beanie": ["beanie", "knit hat", "beanie"]}
_BAG_NOUNS = {"backpack": ["backpack", "backpack", "rucksack"],
              "handbag": ["handbag", "purse", "handbag"],
              "shoulder bag": ["shoulder bag", "bag over the shoulder", "messenger bag"]}


def _colour_word(rng, name: str) -> str:
    if name == "grey":
        return "grey" if rng.random() < 0.5 else "gray"
    if name == "purple" and rng.random() < 0.1:
        return "violet"
    return name


def _hair_word(rng, name: str) -> str:
    if name == "blonde":
        return _pick(rng, ["blonde", "blond", "yellow"], [6, 3, 1])
    return _colour_word(rng, name)


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _both_colours(p: Person, rng) -> str:
    return f"{_colour_word(rng, p.upper_colour)} and {_colour_word(rng, p.upper_colour2)}"


def _upper_phrase(p: Person, rng) -> str:
    noun = _pick(rng, _UPPER_NOUNS[p.upper])
    if p.pattern == "striped" and rng.random() < 0.85:
        if rng.random() < 0.6:
            col = f"{_both_colours(p, rng)} striped "
        else:
            col = f"striped {_colour_word(rng, p.upper_colour)} "
    elif p.pattern == "two-tone" and rng.random() < 0.85:
        col = f"{_both_colours(p, rng)} "
    else:
        col = f"{_colour_word(rng, p.upper_colour)} " if rng.random() < _COLOUR_P else ""
    sleeve = ""
    if p.upper in ("shirt", "dress", "t-shirt") and rng.random() < 0.35:
        if p.sleeves == "none":
            sleeve = "sleeveless "
        elif p.sleeves == "short":
            sleeve = "short-sleeved "
        else:
            sleeve = "long-sleeved "
    if sleeve and rng.random() < 0.5 and p.sleeves != "none":
        return _a(f"{col}{noun} with {p.sleeves} sleeves")
    return _a(f"{sleeve}{col}{noun}")


def _lower_phrase(p: Person, rng) -> str:
    col = f"{_colour_word(rng, p.lower_colour)} " if rng.random() < _COLOUR_P else ""
    if p.lower == "skirt":
        return _a(f"{col}{_pick(rng, ['skirt', 'skirt', 'short skirt', 'long skirt'])}")
    noun = _pick(rng, _LOWER_NOUNS[p.lower])
    return f"a pair of {col}{noun}" if rng.random() < 0.25 else f"{col}{noun}"


def _shoes_phrase(p: Person, rng) -> str:
    noun = _pick(rng, ["shoes", "shoes", "sneakers", "trainers"])
    col = _colour_word(rng, p.shoes_colour)
    return f"a pair of {col} {noun}" if rng.random() < 0.3 else f"{col} {noun}"


def _hair_phrase(p: Person, rng) -> str:
    hc = _hair_word(rng, p.hair_colour)
    # Every value is built (and draws) whatever the style: the draw order depends on it.
    return {"short": f"short {hc} hair",
            "long": _pick(rng, [f"long {hc} hair", f"long {hc} hair that falls past "
                                "the shoulders"]),
            "ponytail": _pick(rng, [f"{hc} hair in a ponytail", _a(f"{hc} ponytail")]),
            "bald": "a bald head"}[p.hair_style]


def _hat_phrase(p: Person, rng) -> str:
    col = _colour_word(rng, p.hat_colour)
    return _a(f"{col} {_pick(rng, _HAT_NOUNS[p.hat])}")


def _bag_phrase(p: Person, rng) -> str:
    col = f"{_colour_word(rng, p.bag_colour)} " if rng.random() < _COLOUR_P else ""
    return _a(f"{col}{_pick(rng, _BAG_NOUNS[p.bag])}")


def _carry_phrase(p: Person, rng) -> str:
    if p.carry == "umbrella":
        if rng.random() < 0.7:
            return _a(f"{_colour_word(rng, p.carry_colour)} umbrella")
        return "an umbrella"
    return _pick(rng, ["a phone", "a cell phone", "a mobile phone"])


def _build_phrase(p: Person, rng) -> str:
    return (_pick(rng, ["stocky", "broad-shouldered", "heavy-set"]) if p.broad
            else _pick(rng, ["slim", "thin", "slender"]))


def _phrases(p: Person, rng: np.random.Generator) -> dict[str, str]:
    """One randomly worded noun phrase per attribute of this person."""
    out = {"upper": _upper_phrase(p, rng)}
    if p.lower != "none":
        out["lower"] = _lower_phrase(p, rng)
    out["shoes"] = _shoes_phrase(p, rng)
    out["hair"] = _hair_phrase(p, rng)
    if p.hat != "none":
        out["hat"] = _hat_phrase(p, rng)
    if p.bag != "none":
        out["bag"] = _bag_phrase(p, rng)
    if p.carry != "none":
        out["carry"] = _carry_phrase(p, rng)
    out["build"] = _build_phrase(p, rng)
    return out


# ----------------------------------------------------------------------------- sentences

_MALE_NOUNS = ["man", "man", "guy", "male", "young man", "person", "pedestrian"]
_FEMALE_NOUNS = ["woman", "woman", "lady", "girl", "female", "young woman", "person"]
_INCLUDE = {"upper": 0.85, "lower": 0.75, "shoes": 0.4, "hair": 0.5, "hat": 0.7, "bag": 0.7,
            "carry": 0.6, "build": 0.15}          # how often a caption mentions each attribute
_ORDER = ["build", "hair", "hat", "upper", "lower", "shoes", "bag", "carry"]
_WORN = ("upper", "lower", "shoes", "hat")
_DISTRACTORS = [
    "{P} is walking down the street.", "The photo is blurry.", "{P} seems to be in a hurry.",
    "{P} is on {his} way somewhere.", "The picture is taken from a distance.",
    "{P} is standing near a building.", "{P} is looking straight ahead.",
    "The image is a little dark.", "{P} appears to be walking to work.",
    "There is something in the background.", "{P} is outside on a sunny day.",
]
_VIEWS = {"front": "{P} is facing the camera.", "back": "{P} is walking away from the camera.",
          "left": "{P} is walking to the left.", "right": "{P} is walking to the right."}


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _chosen(ph: dict[str, str], rng) -> tuple[str, list[str], list[str]]:
    """The attributes a caption mentions, loosely head to toe: (build prefix, worn, others)."""
    chosen = [k for k in ph if rng.random() < _INCLUDE[k]]
    if not any(k in chosen for k in ("upper", "lower", "bag", "hair")):
        chosen.append(_pick(rng, [k for k in ("upper", "lower", "bag", "hair") if k in ph]))
    if len(chosen) < 2:
        chosen.append(_pick(rng, [k for k in ph if k not in chosen and k != "build"]))
    chosen.sort(key=lambda k: _ORDER.index(k) + rng.uniform(0, 2.5))
    wear = [k for k in chosen if k in _WORN]
    rest = [k for k in chosen if k not in wear]
    build = ph["build"] + " " if "build" in rest else ""
    return build, wear, [k for k in rest if k != "build"]


def _opening(ph: dict[str, str], rng, build: str, noun: str, wear: list[str],
             rest: list[str]) -> tuple[str, list[str], list[str]]:
    """The first sentence, and the worn and other attributes it leaves to later sentences."""
    a_noun = _a(f"{build}{noun}").capitalize()
    if not wear:
        k, rest = rest[0], rest[1:]
        verb = {"hair": "has", "bag": "carrying", "carry": "holding"}[k]
        return f"{a_noun} {'with ' + ph[k] if verb == 'has' else verb + ' ' + ph[k]}.", wear, rest
    n_open = min(len(wear), int(rng.integers(1, 4)))
    first_keys, wear = wear[:n_open], wear[n_open:]
    first = _join([ph[k] for k in first_keys])
    openers = [f"{a_noun} wearing {first}.", f"{a_noun} in {first}.",
               f"The {build}{noun} is wearing {first}.", f"This {build}{noun} wears {first}."]
    if not any(k in ("hat", "shoes") for k in first_keys):
        openers.append(f"{a_noun} who is dressed in {first}.")
    opener = _pick(rng, openers)
    if "hair" in rest and rng.random() < 0.4:
        opener = f"{a_noun} with {ph['hair']} is wearing {first}."
        rest = [k for k in rest if k != "hair"]
    return opener, wear, rest


def _follow_ups(p: Person, ph: dict[str, str], rng, he: str, his: str, noun: str,
                wear: list[str], rest: list[str]) -> list[str]:
    """One sentence per attribute the opening left out."""
    sents = [_pick(rng, [f"{he} is wearing {ph[k]}.", f"{he} also wears {ph[k]}.",
                         f"{he} has on {ph[k]}."]) for k in wear]
    for k in rest:
        if k == "hair":
            sents.append(_pick(rng, [f"{he} has {ph['hair']}.", f"The {noun} has {ph['hair']}."]))
        elif k == "bag":
            extra = " on {} back".format(his) if p.bag == "backpack" and rng.random() < 0.4 else ""
            sents.append(_pick(rng, [f"{he} is carrying {ph['bag']}{extra}.",
                                     f"{he} carries {ph['bag']}{extra}.",
                                     f"This person carries {ph['bag']}{extra}."]))
        elif k == "carry":
            sents.append(_pick(rng, [f"{he} is holding {ph['carry']}.",
                                     f"{he} has {ph['carry']} in {his} hand."]))
    return sents


def _caption(p: Person, rng: np.random.Generator, view: str | None = None) -> str:
    """One caption of ``p``; ``view`` (front | back | left | right) may be mentioned."""
    ph = _phrases(p, rng)
    he, his = ("He", "his") if p.male else ("She", "her")
    noun = _pick(rng, _MALE_NOUNS if p.male else _FEMALE_NOUNS)
    build, wear, rest = _chosen(ph, rng)
    opening, wear, rest = _opening(ph, rng, build, noun, wear, rest)
    sents = [opening] + _follow_ups(p, ph, rng, he, his, noun, wear, rest)
    if rng.random() < 0.3:
        sents.insert(int(rng.integers(1, len(sents) + 1)),
                     _pick(rng, _DISTRACTORS).replace("{P}", he).replace("{his}", his))
    if view is not None and rng.random() < 0.12:
        sents.append(_VIEWS[view].replace("{P}", he))
    return " ".join(sents)
