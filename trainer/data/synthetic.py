"""A deterministic synthetic pedestrian dataset in the CUHK-PEDES annotation format.

Real text-based person search datasets cannot be downloaded everywhere (and never in CI), so
tests, the CPU demo and the benchmarks use people drawn here. ``write_synthetic(out)`` writes

    out/reid_raw.json                 the CUHK-PEDES annotation list
    out/imgs/synth/<pid>_<k>.jpg      one crude pedestrian crop per entry (H x W = image_size)

Each identity has a fixed set of attributes (build, skin, hair, hat, upper garment with sleeves
and pattern, lower garment, shoes, bag, carried object); every image re-renders that person with
Pillow from simple shapes under a new pose, view (front / back / side), scale, position,
lighting and background, and carries two captions that each mention a random subset of the
attributes in varied words. Colours come from an 11-name palette shared by everybody and also
used in the backgrounds, so a colour histogram alone cannot tell a red top over blue jeans from a
blue top over a red skirt: binding colours to garments, shapes, bags and hair is what matters.

Everything is a pure function of ``seed``: the same seed gives byte-identical files.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["write_synthetic", "PALETTE", "ATTRIBUTE_WORDS", "tokenize_caption"]

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


# ----------------------------------------------------------------------------- attributes

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
    return _pick(rng, [n for n in _NAMES if n != avoid])


def sample_person(rng: np.random.Generator) -> Person:
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


# ----------------------------------------------------------------------------- drawing

def _darker(c, f=0.7):
    return tuple(int(v * f) for v in c)


def _mix(a, b, t):
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))


def _limb(d: ImageDraw.ImageDraw, a, b, wa, wb, col):
    """A tapered segment from a to b with rounded ends."""
    (ax, ay), (bx, by) = a, b
    dx, dy = bx - ax, by - ay
    n = math.hypot(dx, dy) or 1.0
    nx, ny = -dy / n, dx / n
    d.polygon([(ax + nx * wa / 2, ay + ny * wa / 2), (bx + nx * wb / 2, by + ny * wb / 2),
               (bx - nx * wb / 2, by - ny * wb / 2), (ax - nx * wa / 2, ay - ny * wa / 2)],
              fill=col)
    d.ellipse([bx - wb / 2, by - wb / 2, bx + wb / 2, by + wb / 2], fill=col)
    d.ellipse([ax - wa / 2, ay - wa / 2, ax + wa / 2, ay + wa / 2], fill=col)


def _lerp(a, b, t):
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


def _draw_person(d: ImageDraw.ImageDraw, p: Person, rng: np.random.Generator,
                 cx: float, top: float, ph: float, view: str):
    """Draw one pedestrian standing on y = top + ph. view: front | back | left | right."""
    u = ph
    side = view in ("left", "right")
    face = 1 if view == "right" else -1            # facing direction in side views
    skin, hair = p.skin, p.rgb["hair"]
    up, up2, lo = p.rgb["upper"], p.rgb["upper2"], p.rgb["lower"]
    shoes, bagc = p.rgb["shoes"], p.rgb["bag"]
    body = up2 if p.pattern == "two-tone" else up  # colour of yoke and sleeves
    sw = u * (0.27 if p.broad else 0.22)          # shoulder width
    hw = u * (0.2 if p.broad else 0.19)           # hip width
    if side:
        sw, hw = sw * 0.55, hw * 0.62
    y_head = top + 0.072 * u
    hrx, hry = 0.05 * u, 0.064 * u
    y_sh, y_waist, y_hip = top + 0.165 * u, top + 0.38 * u, top + 0.5 * u
    y_knee, y_foot = top + 0.73 * u, top + 0.965 * u
    hx = cx + (face * 0.012 * u if side else 0)
    leg_w = u * (0.085 if p.broad else 0.075)
    arm_w = u * 0.058
    y_lower_end = {"coat": top + 0.7 * u, "dress": top + 0.72 * u}.get(p.upper, y_hip)

    # ---- pose
    stride = rng.uniform(0.0, 0.16) * u
    if side:
        feet = [(cx + face * stride, y_foot), (cx - face * stride, y_foot)]
        hips = [(cx + face * 0.01 * u, y_hip), (cx - face * 0.01 * u, y_hip)]
    else:
        spread = rng.uniform(0.0, 0.05) * u
        hips = [(cx - hw * 0.26, y_hip), (cx + hw * 0.26, y_hip)]
        feet = [(hips[0][0] - spread, y_foot), (hips[1][0] + spread, y_foot)]
    knees = [(h[0] * 0.5 + f[0] * 0.5 + (face * 0.02 * u if side and i == 1 else 0),
              y_knee) for i, (h, f) in enumerate(zip(hips, feet))]
    shoulders = [(cx - sw / 2 + arm_w * 0.4, y_sh + 0.02 * u),
                 (cx + sw / 2 - arm_w * 0.4, y_sh + 0.02 * u)]
    if side:
        shoulders = [(cx - face * 0.01 * u, y_sh + 0.02 * u)] * 2
    arm_len = 0.17 * u
    hands, elbows = [], []
    for i, s in enumerate(shoulders):
        sign = -1 if i == 0 else 1
        if side:
            swing = rng.uniform(-0.5, 0.5) * (1 if i == 0 else -1)
            a1, a2 = swing, swing + face * rng.uniform(0.0, 0.5) * (1 if swing * face > 0 else 0.3)
            e = (s[0] + math.sin(a1) * arm_len, s[1] + math.cos(a1) * arm_len)
            h = (e[0] + math.sin(a2) * arm_len, e[1] + math.cos(a2) * arm_len)
        else:
            a1 = sign * rng.uniform(0.05, 0.3)
            a2 = a1 + sign * rng.uniform(-0.15, 0.2)
            e = (s[0] + math.sin(a1) * arm_len, s[1] + math.cos(a1) * arm_len)
            h = (e[0] + math.sin(a2) * arm_len, e[1] + math.cos(a2) * arm_len)
        elbows.append(e)
        hands.append(h)
    bag_hand = 0 if rng.random() < 0.5 else 1
    carry_hand = 1 - bag_hand if p.bag == "handbag" else int(rng.integers(2))
    if side:
        bag_hand = carry_hand = 1                  # the near arm
    umbrella_open = p.carry == "umbrella" and rng.random() < 0.45
    if p.carry == "phone" or umbrella_open:       # raise the forearm
        s, e = shoulders[carry_hand], elbows[carry_hand]
        e = (s[0] + (face if side else (-1 if carry_hand == 0 else 1)) * 0.04 * u, s[1] + arm_len)
        tgt_y = y_head + 0.06 * u if p.carry == "phone" else y_sh - 0.02 * u
        tgt_x = (hx + face * 0.07 * u) if side else (cx + (-0.35 if carry_hand == 0 else 0.35) * sw)
        ang = math.atan2(tgt_y - e[1], tgt_x - e[0])
        hands[carry_hand] = (e[0] + math.cos(ang) * arm_len, e[1] + math.sin(ang) * arm_len)
        elbows[carry_hand] = e
    if p.bag == "handbag":                         # a hanging, straight arm
        s = shoulders[bag_hand]
        off = 0 if side else (-1 if bag_hand == 0 else 1) * 0.03 * u
        elbows[bag_hand] = (s[0] + off * 0.5, s[1] + arm_len)
        hands[bag_hand] = (s[0] + off, s[1] + 2 * arm_len)

    def sleeve_segments(i, col_far=None):
        s, e, h = shoulders[i], elbows[i], hands[i]
        sc = body if col_far is None else col_far
        if p.sleeves == "long" and p.upper != "dress":
            _limb(d, s, e, arm_w, arm_w * 0.9, sc)
            _limb(d, e, _lerp(e, h, 0.85), arm_w * 0.9, arm_w * 0.8, sc)
            d.ellipse([h[0] - arm_w * 0.42, h[1] - arm_w * 0.42, h[0] + arm_w * 0.42,
                       h[1] + arm_w * 0.42], fill=skin)
        else:
            _limb(d, s, e, arm_w * 0.85, arm_w * 0.75, skin)
            _limb(d, e, h, arm_w * 0.75, arm_w * 0.7, skin)
            if p.sleeves == "short":
                _limb(d, s, _lerp(s, e, 0.55), arm_w * 1.05, arm_w, sc)

    def draw_bag_body():
        if p.bag == "handbag":
            h = hands[bag_hand]
            bw, bh = 0.085 * u, 0.07 * u
            d.arc([h[0] - bw * 0.3, h[1] - bh * 0.2, h[0] + bw * 0.3, h[1] + bh * 0.5], 180, 360,
                  fill=_darker(bagc), width=max(1, int(u * 0.008)))
            d.polygon([(h[0] - bw * 0.4, h[1] + bh * 0.15), (h[0] + bw * 0.4, h[1] + bh * 0.15),
                       (h[0] + bw * 0.5, h[1] + bh), (h[0] - bw * 0.5, h[1] + bh)], fill=bagc)
        elif p.bag == "shoulder bag":
            bx = (cx + face * 0.02 * u) if side else (cx + (hw * 0.65 if bag_hand else -hw * 0.65))
            by = y_hip - 0.02 * u
            bw, bh = 0.1 * u, 0.08 * u
            d.rectangle([bx - bw / 2, by - bh / 2, bx + bw / 2, by + bh / 2], fill=bagc)
            d.line([(bx - bw / 2, by - bh / 6), (bx + bw / 2, by - bh / 6)], fill=_darker(bagc),
                   width=max(1, int(u * 0.006)))

    def draw_strap():
        if p.bag != "shoulder bag":
            return
        wid = max(1, int(u * 0.014))
        if side:
            d.line([(cx, y_sh + 0.01 * u), (cx + face * 0.02 * u, y_hip - 0.06 * u)], fill=bagc,
                   width=wid)
        else:
            sx = cx - sw * 0.38 if bag_hand else cx + sw * 0.38
            bx = cx + hw * 0.6 if bag_hand else cx - hw * 0.6
            d.line([(sx, y_sh + 0.005 * u), (bx, y_hip - 0.06 * u)], fill=bagc, width=wid)

    # ---- things behind the body
    if p.hair_style == "long" and view == "front":
        d.rounded_rectangle([hx - hrx * 1.25, y_head - hry * 1.05, hx + hrx * 1.25,
                             y_sh + 0.07 * u], radius=hrx * 0.8, fill=hair)
    if p.bag == "backpack" and side:
        bx = cx - face * (sw / 2 + 0.045 * u)
        d.rounded_rectangle([bx - 0.055 * u, y_sh + 0.02 * u, bx + 0.055 * u, y_waist + 0.03 * u],
                            radius=0.02 * u, fill=bagc)
    if side:                                       # the far arm
        sleeve_segments(0, col_far=_darker(body, 0.8))
    if p.carry == "umbrella" and not umbrella_open:
        h = hands[carry_hand]
        tip = (h[0] + (face if side else (-1 if carry_hand == 0 else 1)) * 0.06 * u, y_foot)
        _limb(d, _lerp(h, tip, 0.12), tip, 0.045 * u, 0.012 * u, p.rgb["carry"])

    # ---- legs and shoes
    for i in range(2):
        leg_col = lo if p.lower in ("trousers", "jeans") else skin
        if side and i == 1:
            leg_col = _darker(leg_col, 0.85)
        _limb(d, hips[i], knees[i], leg_w, leg_w * 0.85, leg_col)
        _limb(d, knees[i], feet[i], leg_w * 0.85, leg_w * 0.7, leg_col)
        if p.lower == "jeans":                     # seams
            d.line([_lerp(hips[i], knees[i], 0.3), knees[i], _lerp(knees[i], feet[i], 0.9)],
                   fill=_mix(lo, (230, 230, 230), 0.25), width=max(1, int(u * 0.005)))
        if p.lower == "shorts":
            _limb(d, hips[i], _lerp(hips[i], knees[i], 0.65), leg_w * 1.1, leg_w * 1.05, lo)
        f = feet[i]
        fl, fh = 0.05 * u, 0.022 * u
        if side:
            d.ellipse([f[0] - fl + face * 0.025 * u, f[1] - fh, f[0] + fl + face * 0.025 * u,
                       f[1] + fh], fill=shoes)
        else:
            d.ellipse([f[0] - fl * 0.8, f[1] - fh, f[0] + fl * 0.8, f[1] + fh * 1.1], fill=shoes)
    # pelvis / skirt in the lower garment's colour
    if p.lower in ("trousers", "jeans", "shorts"):
        d.polygon([(cx - hw / 2, y_hip - 0.05 * u), (cx + hw / 2, y_hip - 0.05 * u),
                   (cx + hw / 2, y_hip + 0.03 * u), (cx - hw / 2, y_hip + 0.03 * u)], fill=lo)
    elif p.lower == "skirt":
        flare = hw * rng.uniform(0.65, 0.9)
        d.polygon([(cx - hw / 2, y_hip - 0.06 * u), (cx + hw / 2, y_hip - 0.06 * u),
                   (cx + flare, top + 0.68 * u), (cx - flare, top + 0.68 * u)], fill=lo)

    # ---- torso (upper garment)
    def x_extent(y):
        """Half width of the garment at height y."""
        if y <= y_waist:
            t = (y - y_sh) / (y_waist - y_sh)
            return sw / 2 * (1 - t) + (sw * 0.42 + hw * 0.08) * t
        if y <= y_hip:
            t = (y - y_waist) / (y_hip - y_waist)
            return (sw * 0.42 + hw * 0.08) * (1 - t) + hw / 2 * 1.02 * t
        t = (y - y_hip) / max(1e-6, y_lower_end - y_hip)
        flare = 0.55 if p.upper == "dress" else 0.1
        return hw / 2 * 1.02 + hw * flare * t

    def band(y0, y1, col):
        y0, y1 = max(y0, y_sh), min(y1, y_lower_end)
        if y1 <= y0:
            return
        ys = [y0, y_waist, y_hip, y1] if y0 < y_waist < y1 else [y0, y1]
        ys = sorted({y for y in ys if y0 <= y <= y1} | {y0, y1})
        left = [(cx - x_extent(y), y) for y in ys]
        right = [(cx + x_extent(y), y) for y in reversed(ys)]
        d.polygon(left + right, fill=col)

    band(y_sh, y_lower_end, up)
    if not side:                                   # rounded shoulders
        r = 0.035 * u
        for sx in (cx - sw / 2 + r, cx + sw / 2 - r):
            d.ellipse([sx - r, y_sh - 0.006 * u, sx + r, y_sh + 2 * r], fill=body)
    if p.pattern == "striped":
        n = int(rng.integers(4, 7))
        step = (min(y_lower_end, y_hip + 0.03 * u) - y_sh) / (2 * n)
        for k in range(n):
            y0 = y_sh + step * (2 * k + 1)
            band(y0, y0 + step, up2)
    elif p.pattern == "two-tone":
        band(y_sh, y_sh + (y_waist - y_sh) * 0.45, up2)
    gar = _darker(up, 0.65)
    thin = max(1, int(u * 0.007))
    if p.upper == "hoodie":
        if view == "back":
            d.chord([cx - sw * 0.33, y_sh - 0.05 * u, cx + sw * 0.33, y_sh + 0.11 * u], 0, 180,
                    fill=_darker(body, 0.82))
        elif view == "front":
            d.rectangle([cx - hw * 0.42, y_waist, cx + hw * 0.42, y_hip - 0.015 * u], fill=gar)
            for sx in (-0.025, 0.025):
                d.line([(cx + sx * u, y_sh + 0.01 * u), (cx + sx * u, y_sh + 0.08 * u)],
                       fill=(235, 235, 235), width=thin)
    if view == "front":
        if p.upper in ("jacket", "coat"):
            d.line([(cx, y_sh + 0.02 * u), (cx, y_lower_end)], fill=gar, width=thin + 1)
            if p.upper == "coat":
                for k in range(4):
                    yy = y_sh + 0.06 * u + k * 0.08 * u
                    d.ellipse([cx + 0.012 * u, yy, cx + 0.024 * u, yy + 0.012 * u], fill=gar)
        if p.upper == "shirt":
            d.line([(cx, y_sh + 0.03 * u), (cx, y_hip)], fill=gar, width=thin)
        if p.upper in ("shirt", "jacket", "coat"):
            cc = _mix(body, (255, 255, 255), 0.25) if p.upper == "shirt" else _darker(body, 0.8)
            d.polygon([(cx - 0.05 * u, y_sh - 0.01 * u), (cx, y_sh + 0.05 * u),
                       (cx - 0.015 * u, y_sh - 0.01 * u)], fill=cc)
            d.polygon([(cx + 0.05 * u, y_sh - 0.01 * u), (cx, y_sh + 0.05 * u),
                       (cx + 0.015 * u, y_sh - 0.01 * u)], fill=cc)
        if p.upper in ("t-shirt", "dress"):
            d.chord([cx - 0.035 * u, y_sh - 0.03 * u, cx + 0.035 * u, y_sh + 0.03 * u], 0, 180,
                    fill=skin)
    if view == "back" and p.bag == "backpack":
        bw = sw * 0.78
        d.rounded_rectangle([cx - bw / 2, y_sh + 0.03 * u, cx + bw / 2, y_hip - 0.04 * u],
                            radius=0.03 * u, fill=bagc)
        d.rounded_rectangle([cx - bw * 0.35, y_waist - 0.04 * u, cx + bw * 0.35, y_hip - 0.06 * u],
                            radius=0.015 * u, fill=_darker(bagc, 0.8))
    if view == "front" and p.bag == "backpack":
        wid = max(1, int(u * 0.018))
        for sx in (-1, 1):
            d.line([(cx + sx * sw * 0.3, y_sh), (cx + sx * sw * 0.28, y_waist - 0.03 * u)],
                   fill=bagc, width=wid)
    if side and p.bag == "backpack":
        d.line([(cx - face * 0.005 * u, y_sh), (cx - face * 0.02 * u, y_waist - 0.04 * u)],
               fill=bagc, width=max(1, int(u * 0.016)))
    draw_strap()

    # ---- arms (the near one in side views), bag bodies, phone
    for i in ((1,) if side else (0, 1)):
        sleeve_segments(i)
    draw_bag_body()
    if p.carry == "phone":
        h = hands[carry_hand]
        d.rectangle([h[0] - 0.012 * u, h[1] - 0.03 * u, h[0] + 0.012 * u, h[1] + 0.005 * u],
                    fill=p.rgb["carry"])

    # ---- neck, head, face
    d.rectangle([hx - 0.022 * u, y_head + hry * 0.6, hx + 0.022 * u, y_sh + 0.01 * u], fill=skin)
    if p.upper == "hoodie" and view != "back":
        d.chord([hx - 0.05 * u, y_sh - 0.025 * u, hx + 0.05 * u, y_sh + 0.035 * u], 180, 360,
                fill=_darker(body, 0.85))
    d.ellipse([hx - hrx, y_head - hry, hx + hrx, y_head + hry], fill=skin)
    if view == "front":
        ey = y_head - hry * 0.05
        er = max(0.8, 0.008 * u)
        for sx in (-0.4, 0.4):
            d.ellipse([hx + sx * hrx - er, ey - er, hx + sx * hrx + er, ey + er], fill=(40, 30, 30))
    elif side:
        d.ellipse([hx + face * hrx * 0.85 - 0.01 * u, y_head - 0.005 * u,
                   hx + face * hrx * 0.85 + 0.012 * u, y_head + 0.015 * u], fill=skin)

    # ---- hair
    box = [hx - hrx * 1.08, y_head - hry * 1.12, hx + hrx * 1.08, y_head + hry * 0.95]
    if p.hair_style == "bald":
        pass
    elif view == "back":
        if p.hair_style == "long":
            d.rounded_rectangle([hx - hrx * 1.2, y_head - hry * 1.1, hx + hrx * 1.2,
                                 y_sh + 0.1 * u], radius=hrx * 0.8, fill=hair)
        else:
            d.ellipse(box, fill=hair)
            if p.hair_style == "ponytail":
                _limb(d, (hx, y_head), (hx, y_sh + 0.035 * u), 0.04 * u, 0.022 * u, hair)
    elif side:
        d.pieslice(box, 180, 360, fill=hair)
        back = [hx - face * hrx * 1.1, y_head - hry * 0.2]
        if face == 1:                              # the back of the head
            d.pieslice(box, 90, 270, fill=hair)
        else:
            d.pieslice(box, 270, 450, fill=hair)
        if p.hair_style == "long":
            d.rounded_rectangle([min(hx - face * hrx * 1.15, hx), y_head - hry * 0.3,
                                 max(hx - face * hrx * 1.15, hx), y_sh + 0.06 * u],
                                radius=hrx * 0.4, fill=hair)
        elif p.hair_style == "ponytail":
            _limb(d, (back[0], back[1]), (back[0] - face * 0.02 * u, y_sh + 0.02 * u),
                  0.035 * u, 0.02 * u, hair)
    else:                                          # front
        d.chord([box[0], box[1], box[2], y_head + hry * 0.3], 180, 360, fill=hair)
        if p.hair_style in ("long", "ponytail"):
            d.rectangle([box[0], y_head - hry * 0.4, box[0] + hrx * 0.28, y_head + hry * 0.5],
                        fill=hair)
            d.rectangle([box[2] - hrx * 0.28, y_head - hry * 0.4, box[2], y_head + hry * 0.5],
                        fill=hair)

    # ---- hat
    if p.hat != "none":
        hc = p.rgb["hat"]
        if p.hat == "cap":
            d.chord([hx - hrx * 1.1, y_head - hry * 1.2, hx + hrx * 1.1, y_head + hry * 0.2],
                    180, 360, fill=hc)
            if side:
                d.polygon([(hx, y_head - hry * 0.4), (hx + face * hrx * 1.9, y_head - hry * 0.3),
                           (hx + face * hrx * 1.9, y_head - hry * 0.15), (hx, y_head - hry * 0.1)],
                          fill=_darker(hc, 0.85))
            elif view == "front":
                d.ellipse([hx - hrx * 1.2, y_head - hry * 0.55, hx + hrx * 1.2,
                           y_head - hry * 0.15], fill=_darker(hc, 0.85))
        else:
            d.chord([hx - hrx * 1.12, y_head - hry * 1.35, hx + hrx * 1.12, y_head + hry * 0.15],
                    180, 360, fill=hc)
            d.rectangle([hx - hrx * 1.12, y_head - hry * 0.5, hx + hrx * 1.12, y_head - hry * 0.18],
                        fill=_darker(hc, 0.8))
    if umbrella_open:
        h = hands[carry_hand]
        r = 0.2 * u
        ux = h[0]
        uy = min(h[1], y_head - hry * 1.3)
        d.line([h, (ux, uy)], fill=(60, 60, 60), width=max(1, int(u * 0.01)))
        d.chord([ux - r, uy - r * 0.55, ux + r, uy + r * 0.55], 180, 360, fill=p.rgb["carry"])


# ----------------------------------------------------------------------------- scene

def _background(rng: np.random.Generator, w: int, h: int, person: Person) -> Image.Image:
    """Gradient + large-scale texture + clutter objects, some in clothing colours."""
    def muted():
        c = rng.uniform(40, 210, 3)
        return c * 0.55 + c.mean() * 0.45
    sky, wall, ground = muted(), muted(), muted() * rng.uniform(0.7, 1.0)
    horizon = rng.uniform(0.55, 0.85) * h
    ys = np.arange(h, dtype=np.float64)[:, None]
    t = np.clip((ys - horizon) / (0.08 * h) + 0.5, 0, 1)       # wall -> ground
    g = np.clip(ys / horizon, 0, 1)
    top = sky[None] * (1 - g) + wall[None] * g
    img = top * (1 - t) + ground[None] * t
    img = np.repeat(img[:, None, :], w, axis=1)
    # large-scale blotchy texture
    gh, gw = int(rng.integers(3, 9)), int(rng.integers(2, 5))
    tex = Image.fromarray(rng.uniform(0, 255, (gh, gw)).astype(np.uint8)).resize((w, h),
                                                                                  Image.BILINEAR)
    img += (np.asarray(tex, np.float64)[..., None] - 128) * rng.uniform(0.05, 0.25)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(out)
    # fine clutter: edges, windows, pavement joints
    for _ in range(int(rng.integers(3, 12))):
        c = tuple(int(v) for v in np.clip(muted() * rng.uniform(0.5, 1.2), 0, 255))
        if rng.random() < 0.5:
            x = rng.uniform(0, w)
            d.line([(x, rng.uniform(0, h * 0.3)), (x + rng.normal(0, w * 0.05), rng.uniform(h * 0.4, h))],
                   fill=c, width=int(rng.integers(1, 4)))
        else:
            y = rng.uniform(horizon, h)
            d.line([(0, y), (w, y + rng.normal(0, h * 0.03))], fill=c, width=int(rng.integers(1, 3)))
    # coloured objects: signs, cars, shop fronts, bins; palette colours, sometimes the person's
    own = [person.upper_colour, person.lower_colour, person.bag_colour, person.shoes_colour]
    for _ in range(int(rng.integers(1, 5))):
        name = _pick(rng, own) if rng.random() < 0.25 else _pick(rng, _NAMES)
        c = _shade(rng, name)
        x0, y0 = rng.uniform(-0.3, 1.0) * w, rng.uniform(-0.1, 1.0) * h
        bw, bh = rng.uniform(0.12, 0.55) * w, rng.uniform(0.04, 0.3) * h
        if rng.random() < 0.7:
            d.rectangle([x0, y0, x0 + bw, y0 + bh], fill=c)
        else:
            d.ellipse([x0, y0, x0 + bw, y0 + bh], fill=c)
    return out


def _render(p: Person, rng: np.random.Generator, size: tuple[int, int]) -> tuple[Image.Image, str]:
    """One image of ``p`` and the view it was drawn from."""
    H, W = size
    ss = 2                                          # supersampling for smooth edges
    w, h = W * ss, H * ss
    canvas = _background(rng, w, h, p)
    d = ImageDraw.Draw(canvas)
    view = _pick(rng, ["front", "back", "left", "right"], [36, 28, 18, 18])
    if rng.random() < 0.2:                          # part of another pedestrian at the edge
        other = sample_person(rng)
        oph = h * rng.uniform(0.75, 1.0)
        ocx = w * (rng.uniform(-0.3, -0.1) if rng.random() < 0.5 else rng.uniform(1.1, 1.3))
        _draw_person(d, other, rng, ocx, h * rng.uniform(-0.05, 0.1), oph,
                     _pick(rng, ["front", "back", "left", "right"]))
    ph = h * rng.uniform(0.8, 0.97)
    top = rng.uniform(-0.02, 1.0) * (h - ph) if h > ph else 0.0
    cx = w / 2 + rng.normal(0, 0.06) * w
    _draw_person(d, p, rng, cx, top, ph, view)
    return _finish(canvas, rng, (H, W)), view


def _finish(canvas: Image.Image, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    H, W = size
    img = canvas.resize((W, H), Image.BOX)
    if rng.random() < 0.6:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.8) * H / 128))
    # lighting: brightness, contrast, colour cast; then sensor noise
    a = np.asarray(img, np.float32)
    mean = a.mean()
    a = (a - mean) * rng.uniform(0.75, 1.15) + mean
    a = a * rng.uniform(0.72, 1.2) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    a = a + rng.normal(0, rng.uniform(1.0, 5.0), a.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------- captions

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


def _phrases(p: Person, rng: np.random.Generator) -> dict[str, str]:
    """One randomly worded noun phrase per attribute of this person."""
    cw = lambda n: _colour_word(rng, n)
    colour_p = 0.9                                   # annotators sometimes drop the colour
    out = {}
    # upper garment
    noun = {"t-shirt": ["t-shirt", "tee", "t-shirt", "tee shirt"],
            "shirt": ["shirt", "button-up shirt", "shirt", "collared shirt"],
            "jacket": ["jacket", "zip-up jacket", "jacket"],
            "hoodie": ["hoodie", "hooded sweatshirt", "hoodie", "sweatshirt"],
            "coat": ["coat", "long coat", "overcoat"],
            "dress": ["dress", "dress", "knee-length dress"]}[p.upper]
    noun = _pick(rng, noun)
    if p.pattern == "striped" and rng.random() < 0.85:
        if rng.random() < 0.6:
            col = f"{cw(p.upper_colour)} and {cw(p.upper_colour2)} striped "
        else:
            col = f"striped {cw(p.upper_colour)} "
    elif p.pattern == "two-tone" and rng.random() < 0.85:
        col = f"{cw(p.upper_colour)} and {cw(p.upper_colour2)} "
    else:
        col = f"{cw(p.upper_colour)} " if rng.random() < colour_p else ""
    sleeve = ""
    if p.upper in ("shirt", "dress", "t-shirt") and rng.random() < 0.35:
        if p.sleeves == "none":
            sleeve = "sleeveless "
        elif p.sleeves == "short":
            sleeve = "short-sleeved "
        else:
            sleeve = "long-sleeved "
    if sleeve and rng.random() < 0.5 and p.sleeves != "none":
        out["upper"] = _a(f"{col}{noun} with {p.sleeves} sleeves")
    else:
        out["upper"] = _a(f"{sleeve}{col}{noun}")
    # lower garment
    if p.lower != "none":
        col = f"{cw(p.lower_colour)} " if rng.random() < colour_p else ""
        if p.lower == "skirt":
            out["lower"] = _a(f"{col}{_pick(rng, ['skirt', 'skirt', 'short skirt', 'long skirt'])}")
        else:
            noun = {"trousers": ["trousers", "pants", "slacks", "pants"],
                    "jeans": ["jeans", "jeans", "denim jeans"],
                    "shorts": ["shorts"]}[p.lower]
            noun = _pick(rng, noun)
            out["lower"] = (f"a pair of {col}{noun}" if rng.random() < 0.25 else f"{col}{noun}")
    # shoes
    noun = _pick(rng, ["shoes", "shoes", "sneakers", "trainers"])
    col = cw(p.shoes_colour)
    out["shoes"] = f"a pair of {col} {noun}" if rng.random() < 0.3 else f"{col} {noun}"
    # hair
    hc = _hair_word(rng, p.hair_colour)
    out["hair"] = {"short": f"short {hc} hair",
                   "long": _pick(rng, [f"long {hc} hair", f"long {hc} hair that falls past "
                                       "the shoulders"]),
                   "ponytail": _pick(rng, [f"{hc} hair in a ponytail", _a(f"{hc} ponytail")]),
                   "bald": "a bald head"}[p.hair_style]
    if p.hat != "none":
        col = cw(p.hat_colour)
        noun = {"cap": ["cap", "baseball cap"], "beanie": ["beanie", "knit hat", "beanie"]}[p.hat]
        out["hat"] = _a(f"{col} {_pick(rng, noun)}")
    if p.bag != "none":
        col = f"{cw(p.bag_colour)} " if rng.random() < colour_p else ""
        noun = {"backpack": ["backpack", "backpack", "rucksack"],
                "handbag": ["handbag", "purse", "handbag"],
                "shoulder bag": ["shoulder bag", "bag over the shoulder", "messenger bag"]}[p.bag]
        out["bag"] = _a(f"{col}{_pick(rng, noun)}")
    if p.carry == "umbrella":
        out["carry"] = _a(f"{cw(p.carry_colour)} umbrella") if rng.random() < 0.7 else "an umbrella"
    elif p.carry == "phone":
        out["carry"] = _pick(rng, ["a phone", "a cell phone", "a mobile phone"])
    out["build"] = (_pick(rng, ["stocky", "broad-shouldered", "heavy-set"]) if p.broad
                    else _pick(rng, ["slim", "thin", "slender"]))
    return out


_DISTRACTORS = [
    "{P} is walking down the street.", "The photo is blurry.", "{P} seems to be in a hurry.",
    "{P} is on {his} way somewhere.", "The picture is taken from a distance.",
    "{P} is standing near a building.", "{P} is looking straight ahead.",
    "The image is a little dark.", "{P} appears to be walking to work.",
    "There is something in the background.", "{P} is outside on a sunny day.",
]


def _caption(p: Person, rng: np.random.Generator, view: str | None = None) -> str:
    ph = _phrases(p, rng)
    he, his = ("he", "his") if p.male else ("she", "her")
    He = he.capitalize()
    noun = _pick(rng, ["man", "man", "guy", "male", "young man", "person", "pedestrian"]
                 if p.male else
                 ["woman", "woman", "lady", "girl", "female", "young woman", "person"])
    include = {"upper": 0.85, "lower": 0.75, "shoes": 0.4, "hair": 0.5, "hat": 0.7, "bag": 0.7,
               "carry": 0.6, "build": 0.15}
    chosen = [k for k in ph if rng.random() < include[k]]
    if not any(k in chosen for k in ("upper", "lower", "bag", "hair")):
        chosen.append(_pick(rng, [k for k in ("upper", "lower", "bag", "hair") if k in ph]))
    if len(chosen) < 2:
        chosen.append(_pick(rng, [k for k in ph if k not in chosen and k != "build"]))
    order = ["build", "hair", "hat", "upper", "lower", "shoes", "bag", "carry"]
    chosen.sort(key=lambda k: order.index(k) + rng.uniform(0, 2.5))
    wear = [k for k in chosen if k in ("upper", "lower", "shoes", "hat")]
    rest = [k for k in chosen if k not in wear]
    build = ph["build"] + " " if "build" in rest else ""
    rest = [k for k in rest if k != "build"]

    def join(items):
        return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]

    sents = []
    a_noun = _a(f"{build}{noun}")
    if wear:
        n_open = min(len(wear), int(rng.integers(1, 4)))
        first_keys, wear = wear[:n_open], wear[n_open:]
        first = [ph[k] for k in first_keys]
        openers = [f"{a_noun.capitalize()} wearing {join(first)}.",
                   f"{a_noun.capitalize()} in {join(first)}.",
                   f"The {build}{noun} is wearing {join(first)}.",
                   f"This {build}{noun} wears {join(first)}."]
        if not any(k in ("hat", "shoes") for k in first_keys):
            openers.append(f"{a_noun.capitalize()} who is dressed in {join(first)}.")
        opener = _pick(rng, openers)
        if "hair" in rest and rng.random() < 0.4:
            opener = f"{a_noun.capitalize()} with {ph['hair']} is wearing {join(first)}."
            rest.remove("hair")
        sents.append(opener)
    else:
        k = rest.pop(0)
        verb = {"hair": "has", "bag": "carrying", "carry": "holding"}[k]
        sents.append(f"{a_noun.capitalize()} {'with ' + ph[k] if verb == 'has' else verb + ' ' + ph[k]}.")
    for k in wear:
        sents.append(_pick(rng, [f"{He} is wearing {ph[k]}.", f"{He} also wears {ph[k]}.",
                                 f"{He} has on {ph[k]}."]))
    for k in rest:
        if k == "hair":
            sents.append(_pick(rng, [f"{He} has {ph['hair']}.", f"The {noun} has {ph['hair']}."]))
        elif k == "bag":
            extra = " on {} back".format(his) if p.bag == "backpack" and rng.random() < 0.4 else ""
            sents.append(_pick(rng, [f"{He} is carrying {ph['bag']}{extra}.",
                                     f"{He} carries {ph['bag']}{extra}.",
                                     f"This person carries {ph['bag']}{extra}."]))
        elif k == "carry":
            sents.append(_pick(rng, [f"{He} is holding {ph['carry']}.",
                                     f"{He} has {ph['carry']} in {his} hand."]))
    if rng.random() < 0.3:
        sents.insert(int(rng.integers(1, len(sents) + 1)),
                     _pick(rng, _DISTRACTORS).replace("{P}", He).replace("{his}", his))
    if view is not None and rng.random() < 0.12:
        sents.append({"front": f"{He} is facing the camera.",
                      "back": f"{He} is walking away from the camera.",
                      "left": f"{He} is walking to the left.",
                      "right": f"{He} is walking to the right."}[view])
    return " ".join(sents)


# ----------------------------------------------------------------------------- writer

def _split_counts(ids: int) -> tuple[int, int, int]:
    n_test = max(1, int(round(0.2 * ids)))
    n_val = max(1, int(round(0.1 * ids)))
    return ids - n_val - n_test, n_val, n_test


def write_synthetic(out: str | os.PathLike, ids: int = 200, seed: int = 0,
                    image_size: tuple[int, int] = (128, 48),
                    images_per_id: tuple[int, int] = (3, 5), progress: bool = True,
                    overwrite: bool = False) -> Path:
    """Write ``ids`` synthetic people in CUHK-PEDES format under ``out``; returns ``Path(out)``.

    Identities 1..ids are split in contiguous blocks, about 70% train / 10% val / 20% test
    (val and test get at least one each). Each identity has between ``images_per_id[0]`` and
    ``images_per_id[1]`` images (H x W = ``image_size``) with two captions each. The files are a
    pure function of the arguments. ``out/reid_raw.json`` is written last, so an interrupted
    run leaves no annotation file; an existing one raises FileExistsError unless ``overwrite``.
    """
    if isinstance(ids, bool) or not isinstance(ids, (int, np.integer)) or ids < 3:
        raise ValueError(f"ids must be an integer >= 3 (train, val and test need one each), got {ids!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    try:
        H, W = (int(v) for v in image_size)
        lo, hi = (int(v) for v in images_per_id)
    except (TypeError, ValueError):
        raise ValueError(f"image_size and images_per_id must be pairs of integers, got "
                         f"{image_size!r} and {images_per_id!r}") from None
    if H < 16 or W < 8:
        raise ValueError(f"image_size (H, W) must be at least (16, 8), got {image_size!r}")
    if not 1 <= lo <= hi:
        raise ValueError(f"images_per_id must be (lo, hi) with 1 <= lo <= hi, got {images_per_id!r}")

    out = Path(out)
    ann = out / "reid_raw.json"
    if ann.exists() and not overwrite:
        raise FileExistsError(f"{ann} already exists (pass overwrite=True to replace it)")
    img_dir = out / "imgs" / "synth"
    img_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:                                  # drop our own stale images only
        for f in img_dir.glob("*.jpg"):
            if re.fullmatch(r"\d+_\d+\.jpg", f.name):
                f.unlink()

    n_train, n_val, _ = _split_counts(ids)
    width = max(4, len(str(ids)))
    kwidth = max(2, len(str(hi)))
    entries = []
    pids = range(1, ids + 1)
    if progress:
        from tqdm import tqdm
        pids = tqdm(pids, desc="synthesizing people", unit="id")
    for pid in pids:
        prng = np.random.default_rng([int(seed), pid, 0])
        person = sample_person(prng)
        n_img = int(prng.integers(lo, hi + 1))
        split = "train" if pid <= n_train else "val" if pid <= n_train + n_val else "test"
        for k in range(1, n_img + 1):
            irng = np.random.default_rng([int(seed), pid, k])
            img, view = _render(person, irng, (H, W))
            rel = f"synth/{pid:0{width}d}_{k:0{kwidth}d}.jpg"
            img.save(out / "imgs" / rel, format="JPEG", quality=90)
            crng = np.random.default_rng([int(seed), pid, k, 1])
            caps = [_caption(person, crng, view)]
            for _ in range(10):                    # two different captions
                c = _caption(person, crng, view)
                if c != caps[0]:
                    break
            caps.append(c)
            entries.append({"split": split, "captions": caps, "file_path": rel, "id": pid,
                            "processed_tokens": [tokenize_caption(c) for c in caps]})
    tmp = ann.with_name(ann.name + ".tmp")
    tmp.write_text(json.dumps(entries), encoding="utf-8")
    os.replace(tmp, ann)
    return out
