"""What a synthetic person wears: the palette, the attribute vocabularies and their frequencies."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The named colours people wear (and backgrounds contain). Values are the "typical" shade;
# each person's garment gets a jittered shade that is still nearest to its own name.
PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (24, 24, 26),
    "white": (236, 236, 232),
    "grey": (128, 128, 130),
    "red": (196, 32, 36),
    "blue": (36, 72, 190),
    "green": (40, 138, 62),
    "yellow": (234, 204, 44),
    "orange": (238, 128, 32),
    "pink": (238, 142, 182),
    "purple": (118, 52, 148),
    "brown": (112, 70, 40),
}
_NAMES = list(PALETTE)
_PAL = np.array([PALETTE[n] for n in _NAMES], np.float64)
# How often each colour is worn (order of _NAMES): skewed like real streets, where black, white,
# grey and blue dominate and many people share a colour scheme.
_TOP_FREQ = [18, 14, 12, 12, 8, 6, 5, 4, 6, 5, 8]
_BOTTOM_FREQ = [30, 8, 14, 5, 20, 3, 2, 2, 3, 2, 11]
_ANY_FREQ = [20, 12, 12, 9, 10, 6, 5, 5, 6, 5, 10]

_SKIN = [(244, 204, 178), (226, 178, 142), (200, 144, 104), (160, 104, 70), (104, 66, 44)]
_HAIR = {"black": (22, 18, 16), "brown": (96, 58, 30), "blonde": (212, 178, 102),
         "grey": (150, 148, 146)}

UPPER_TYPES = ("t-shirt", "shirt", "jacket", "hoodie", "coat", "dress")
LOWER_TYPES = ("trousers", "jeans", "shorts", "skirt")
BAG_TYPES = ("backpack", "handbag", "shoulder bag")


@dataclass(frozen=True)
class Person:
    male: bool
    broad: bool
    skin: tuple
    hair_style: str            # short | long | ponytail | bald
    hair_colour: str           # key of _HAIR
    hat: str                   # none | cap | beanie
    hat_colour: str
    upper: str                 # one of UPPER_TYPES
    sleeves: str               # short | long | none
    pattern: str               # plain | striped | two-tone
    upper_colour: str
    upper_colour2: str         # second colour of striped / two-tone garments
    lower: str                 # one of LOWER_TYPES, or "none" under a dress
    lower_colour: str
    shoes_colour: str
    bag: str                   # none | one of BAG_TYPES
    bag_colour: str
    carry: str                 # none | umbrella | phone
    carry_colour: str
    rgb: dict                  # attribute -> this person's jittered RGB shade


def _pick(rng, items, p=None):
    """One of ``items``, with relative weights ``p`` (uniform if None)."""
    if p is not None:
        p = np.asarray(p, np.float64)
        p = p / p.sum()
    return items[int(rng.choice(len(items), p=p))]


def _shade(rng, name: str) -> tuple[int, int, int]:
    """A jittered shade of a palette colour that is still nearest to that colour."""
    base = np.array(PALETTE[name], np.float64)
    for _ in range(20):
        c = base * rng.uniform(0.82, 1.12) + rng.normal(0, 12, 3)
        c = np.clip(c, 0, 255)
        if _NAMES[int(np.argmin(((_PAL - c) ** 2).sum(1)))] == name:
            return tuple(int(round(v)) for v in c)
    return PALETTE[name]


def _other(rng, avoid: str) -> str:
    """A palette colour other than ``avoid``."""
    return _pick(rng, [n for n in _NAMES if n != avoid])


def sample_person(rng: np.random.Generator) -> Person:
    """One identity's attributes, at the frequencies above."""
    male = bool(rng.random() < 0.5)
    broad = bool(rng.random() < (0.7 if male else 0.2))
    skin = _SKIN[int(rng.integers(len(_SKIN)))]
    skin = tuple(int(np.clip(v + rng.normal(0, 6), 0, 255)) for v in skin)
    if male:
        hair_style = _pick(rng, ["short", "bald", "long", "ponytail"], [70, 12, 10, 8])
    else:
        hair_style = _pick(rng, ["long", "ponytail", "short"], [55, 30, 15])
    hair_colour = _pick(rng, list(_HAIR), [45, 30, 15, 10])
    hat = _pick(rng, ["none", "cap", "beanie"], [65, 20, 15])
    hat_colour = _pick(rng, _NAMES, _ANY_FREQ)
    if male:
        upper = _pick(rng, UPPER_TYPES[:5], [30, 20, 20, 18, 12])
    else:
        upper = _pick(rng, UPPER_TYPES, [24, 14, 16, 14, 12, 20])
    sleeves = {"t-shirt": "short", "shirt": _pick(rng, ["long", "short"]),
               "dress": _pick(rng, ["short", "none"])}.get(upper, "long")
    pattern = _pick(rng, ["plain", "striped", "two-tone"], [65, 20, 15])
    upper_colour = _pick(rng, _NAMES, _TOP_FREQ)
    upper_colour2 = _other(rng, upper_colour)
    if upper == "dress":
        lower = "none"
    elif male:
        lower = _pick(rng, LOWER_TYPES[:3], [40, 38, 22])
    else:
        lower = _pick(rng, LOWER_TYPES, [25, 30, 15, 30])
    if lower == "jeans":
        lower_colour = _pick(rng, ["blue", "black", "grey", "white", "brown"], [55, 20, 12, 8, 5])
    else:
        lower_colour = _pick(rng, _NAMES, _BOTTOM_FREQ)
    shoes_colour = _pick(rng, _NAMES, [30, 26, 10, 5, 6, 3, 2, 2, 4, 2, 10])
    bag = _pick(rng, ["none", "backpack", "handbag", "shoulder bag"], [35, 25, 20, 20])
    bag_colour = _pick(rng, _NAMES, _ANY_FREQ)
    carry = _pick(rng, ["none", "umbrella", "phone"], [74, 13, 13])
    carry_colour = _pick(rng, _NAMES, _ANY_FREQ) if carry == "umbrella" else "black"
    rgb = {"upper": _shade(rng, upper_colour), "upper2": _shade(rng, upper_colour2),
           "lower": _shade(rng, lower_colour), "shoes": _shade(rng, shoes_colour),
           "bag": _shade(rng, bag_colour), "hat": _shade(rng, hat_colour),
           "carry": _shade(rng, carry_colour),
           "hair": tuple(int(np.clip(v * rng.uniform(0.85, 1.12) + rng.normal(0, 5), 0, 255))
                         for v in _HAIR[hair_colour])}
    return Person(male, broad, skin, hair_style, hair_colour, hat, hat_colour, upper, sleeves,
                  pattern, upper_colour, upper_colour2, lower, lower_colour, shoes_colour, bag,
                  bag_colour, carry, carry_colour, rgb)
