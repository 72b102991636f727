"""Where one drawing of a person puts the body: proportions (``Figure``) and a random ``Pose``."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from trainer.data.synthetic.attributes import Person


@dataclass(frozen=True)
class Figure:
    """Proportions of one drawing, in pixels: the person stands on y = top + u."""
    view: str                  # front | back | left | right
    side: bool                 # a left or right view
    face: int                  # facing direction in side views: 1 right, -1 left
    u: float                   # body height, the unit of every other length
    cx: float
    top: float
    body: tuple                # colour of yoke and sleeves
    sw: float                  # shoulder width
    hw: float                  # hip width
    hx: float                  # head centre
    y_head: float
    hrx: float                 # head radii
    hry: float
    y_sh: float                # shoulders, waist, hips, knees, feet
    y_waist: float
    y_hip: float
    y_knee: float
    y_foot: float
    leg_w: float
    arm_w: float
    y_lower_end: float         # hem of the upper garment


def measure(p: Person, cx: float, top: float, ph: float, view: str) -> Figure:
    """The proportions of ``p`` drawn ``ph`` tall from ``top``, centred on ``cx``."""
    u = ph
    side = view in ("left", "right")
    face = 1 if view == "right" else -1
    sw = u * (0.27 if p.broad else 0.22)
    hw = u * (0.2 if p.broad else 0.19)
    if side:
        sw, hw = sw * 0.55, hw * 0.62
    y_hip = top + 0.5 * u
    return Figure(
        view=view, side=side, face=face, u=u, cx=cx, top=top,
        body=p.rgb["upper2"] if p.pattern == "two-tone" else p.rgb["upper"], sw=sw, hw=hw,
        hx=cx + (face * 0.012 * u if side else 0), y_head=top + 0.072 * u,
        hrx=0.05 * u, hry=0.064 * u, y_sh=top + 0.165 * u, y_waist=top + 0.38 * u, y_hip=y_hip,
        y_knee=top + 0.73 * u, y_foot=top + 0.965 * u, leg_w=u * (0.085 if p.broad else 0.075),
        arm_w=u * 0.058,
        y_lower_end={"coat": top + 0.7 * u, "dress": top + 0.72 * u}.get(p.upper, y_hip))


@dataclass(frozen=True)
class Pose:
    """Joint positions and which hand holds what. Index 0 is the limb on the image's left in
    front and back views; in side views arm 0 is the far arm."""
    hips: list
    knees: list
    feet: list
    shoulders: list
    elbows: list
    hands: list
    bag_hand: int
    carry_hand: int
    umbrella_open: bool


def _legs(f: Figure, rng: np.random.Generator) -> tuple[list, list, list]:
    """Hips, knees and feet of a random stride."""
    u, cx, face = f.u, f.cx, f.face
    stride = rng.uniform(0.0, 0.16) * u
    if f.side:
        feet = [(cx + face * stride, f.y_foot), (cx - face * stride, f.y_foot)]
        hips = [(cx + face * 0.01 * u, f.y_hip), (cx - face * 0.01 * u, f.y_hip)]
    else:
        spread = rng.uniform(0.0, 0.05) * u
        hips = [(cx - f.hw * 0.26, f.y_hip), (cx + f.hw * 0.26, f.y_hip)]
        feet = [(hips[0][0] - spread, f.y_foot), (hips[1][0] + spread, f.y_foot)]
    knees = [(h[0] * 0.5 + ft[0] * 0.5 + (face * 0.02 * u if f.side and i == 1 else 0),
              f.y_knee) for i, (h, ft) in enumerate(zip(hips, feet))]
    return hips, knees, feet


def _arms(f: Figure, rng: np.random.Generator, arm_len: float) -> tuple[list, list, list]:
    """Shoulders, elbows and hands of randomly swinging arms."""
    u, cx, face = f.u, f.cx, f.face
    shoulders = [(cx - f.sw / 2 + f.arm_w * 0.4, f.y_sh + 0.02 * u),
                 (cx + f.sw / 2 - f.arm_w * 0.4, f.y_sh + 0.02 * u)]
    if f.side:
        shoulders = [(cx - face * 0.01 * u, f.y_sh + 0.02 * u)] * 2
    hands, elbows = [], []
    for i, s in enumerate(shoulders):
        sign = -1 if i == 0 else 1
        if f.side:
            swing = rng.uniform(-0.5, 0.5) * (1 if i == 0 else -1)
            a1, a2 = swing, swing + face * rng.uniform(0.0, 0.5) * (1 if swing * face > 0 else 0.3)
        else:
            a1 = sign * rng.uniform(0.05, 0.3)
            a2 = a1 + sign * rng.uniform(-0.15, 0.2)
        e = (s[0] + math.sin(a1) * arm_len, s[1] + math.cos(a1) * arm_len)
        h = (e[0] + math.sin(a2) * arm_len, e[1] + math.cos(a2) * arm_len)
        elbows.append(e)
        hands.append(h)
    return shoulders, elbows, hands


def _raise_forearm(f: Figure, p: Person, hand: int, shoulders, elbows, hands, arm_len):
    """Bend the arm of ``hand`` up towards the ear (phone) or over the shoulder (umbrella)."""
    u, face = f.u, f.face
    s = shoulders[hand]
    e = (s[0] + (face if f.side else (-1 if hand == 0 else 1)) * 0.04 * u, s[1] + arm_len)
    tgt_y = f.y_head + 0.06 * u if p.carry == "phone" else f.y_sh - 0.02 * u
    tgt_x = (f.hx + face * 0.07 * u) if f.side else (f.cx + (-0.35 if hand == 0 else 0.35) * f.sw)
    ang = math.atan2(tgt_y - e[1], tgt_x - e[0])
    hands[hand] = (e[0] + math.cos(ang) * arm_len, e[1] + math.sin(ang) * arm_len)
    elbows[hand] = e


def _hang_arm(f: Figure, hand: int, shoulders, elbows, hands, arm_len):
    """Straighten the arm of ``hand`` down the side, as under a handbag's weight."""
    s = shoulders[hand]
    off = 0 if f.side else (-1 if hand == 0 else 1) * 0.03 * f.u
    elbows[hand] = (s[0] + off * 0.5, s[1] + arm_len)
    hands[hand] = (s[0] + off, s[1] + 2 * arm_len)


def sample_pose(p: Person, f: Figure, rng: np.random.Generator) -> Pose:
    """A random stance and arm swing; the arms that hold a bag, phone or umbrella adjusted."""
    hips, knees, feet = _legs(f, rng)
    arm_len = 0.17 * f.u
    shoulders, elbows, hands = _arms(f, rng, arm_len)
    bag_hand = 0 if rng.random() < 0.5 else 1
    carry_hand = 1 - bag_hand if p.bag == "handbag" else int(rng.integers(2))
    if f.side:
        bag_hand = carry_hand = 1                  # the near arm
    umbrella_open = p.carry == "umbrella" and rng.random() < 0.45
    if p.carry == "phone" or umbrella_open:
        _raise_forearm(f, p, carry_hand, shoulders, elbows, hands, arm_len)
    if p.bag == "handbag":
        _hang_arm(f, bag_hand, shoulders, elbows, hands, arm_len)
    return Pose(hips, knees, feet, shoulders, elbows, hands, bag_hand, carry_hand, umbrella_open)
