"""The upper body: the garment's silhouette and pattern, its details, and the arms in sleeves."""
from __future__ import annotations

import numpy as np
from PIL import ImageDraw

from trainer.data.synthetic.attributes import Person
from trainer.data.synthetic.render.figure import Figure, Pose
from trainer.data.synthetic.render.shapes import _darker, _lerp, _limb, _mix


def _half_width(p: Person, f: Figure, y: float) -> float:
    """Half width of the garment at height y: shoulders to waist to hips, then the hem's flare."""
    sw, hw = f.sw, f.hw
    if y <= f.y_waist:
        t = (y - f.y_sh) / (f.y_waist - f.y_sh)
        return sw / 2 * (1 - t) + (sw * 0.42 + hw * 0.08) * t
    if y <= f.y_hip:
        t = (y - f.y_waist) / (f.y_hip - f.y_waist)
        return (sw * 0.42 + hw * 0.08) * (1 - t) + hw / 2 * 1.02 * t
    t = (y - f.y_hip) / max(1e-6, f.y_lower_end - f.y_hip)
    flare = 0.55 if p.upper == "dress" else 0.1
    return hw / 2 * 1.02 + hw * flare * t


def _band(d: ImageDraw.ImageDraw, p: Person, f: Figure, y0: float, y1: float, col):
    """The garment between heights y0 and y1 (clipped to the garment), in ``col``."""
    y0, y1 = max(y0, f.y_sh), min(y1, f.y_lower_end)
    if y1 <= y0:
        return
    ys = [y0, f.y_waist, f.y_hip, y1] if y0 < f.y_waist < y1 else [y0, y1]
    ys = sorted({y for y in ys if y0 <= y <= y1} | {y0, y1})
    left = [(f.cx - _half_width(p, f, y), y) for y in ys]
    right = [(f.cx + _half_width(p, f, y), y) for y in reversed(ys)]
    d.polygon(left + right, fill=col)


def draw_torso(d: ImageDraw.ImageDraw, p: Person, f: Figure, rng: np.random.Generator):
    """The garment's silhouette with rounded shoulders, then its stripes or second colour."""
    u, cx, sw, y_sh = f.u, f.cx, f.sw, f.y_sh
    up2 = p.rgb["upper2"]
    _band(d, p, f, y_sh, f.y_lower_end, p.rgb["upper"])
    if not f.side:
        r = 0.035 * u
        for sx in (cx - sw / 2 + r, cx + sw / 2 - r):
            d.ellipse([sx - r, y_sh - 0.006 * u, sx + r, y_sh + 2 * r], fill=f.body)
    if p.pattern == "striped":
        n = int(rng.integers(4, 7))
        step = (min(f.y_lower_end, f.y_hip + 0.03 * u) - y_sh) / (2 * n)
        for k in range(n):
            y0 = y_sh + step * (2 * k + 1)
            _band(d, p, f, y0, y0 + step, up2)
    elif p.pattern == "two-tone":
        _band(d, p, f, y_sh, y_sh + (f.y_waist - y_sh) * 0.45, up2)


def _draw_hoodie(d: ImageDraw.ImageDraw, f: Figure, gar, thin: int):
    """The hood on the back; the front pocket and drawstrings."""
    u, cx, sw, hw, y_sh = f.u, f.cx, f.sw, f.hw, f.y_sh
    if f.view == "back":
        d.chord([cx - sw * 0.33, y_sh - 0.05 * u, cx + sw * 0.33, y_sh + 0.11 * u], 0, 180,
                fill=_darker(f.body, 0.82))
    elif f.view == "front":
        d.rectangle([cx - hw * 0.42, f.y_waist, cx + hw * 0.42, f.y_hip - 0.015 * u], fill=gar)
        for sx in (-0.025, 0.025):
            d.line([(cx + sx * u, y_sh + 0.01 * u), (cx + sx * u, y_sh + 0.08 * u)],
                   fill=(235, 235, 235), width=thin)


def _draw_front(d: ImageDraw.ImageDraw, p: Person, f: Figure, gar, thin: int):
    """Seen from the front: zips, buttons and button plackets, collars, necklines."""
    u, cx, y_sh = f.u, f.cx, f.y_sh
    if p.upper in ("jacket", "coat"):
        d.line([(cx, y_sh + 0.02 * u), (cx, f.y_lower_end)], fill=gar, width=thin + 1)
        if p.upper == "coat":
            for k in range(4):
                yy = y_sh + 0.06 * u + k * 0.08 * u
                d.ellipse([cx + 0.012 * u, yy, cx + 0.024 * u, yy + 0.012 * u], fill=gar)
    if p.upper == "shirt":
        d.line([(cx, y_sh + 0.03 * u), (cx, f.y_hip)], fill=gar, width=thin)
    if p.upper in ("shirt", "jacket", "coat"):
        cc = _mix(f.body, (255, 255, 255), 0.25) if p.upper == "shirt" else _darker(f.body, 0.8)
        d.polygon([(cx - 0.05 * u, y_sh - 0.01 * u), (cx, y_sh + 0.05 * u),
                   (cx - 0.015 * u, y_sh - 0.01 * u)], fill=cc)
        d.polygon([(cx + 0.05 * u, y_sh - 0.01 * u), (cx, y_sh + 0.05 * u),
                   (cx + 0.015 * u, y_sh - 0.01 * u)], fill=cc)
    if p.upper in ("t-shirt", "dress"):
        d.chord([cx - 0.035 * u, y_sh - 0.03 * u, cx + 0.035 * u, y_sh + 0.03 * u], 0, 180,
                fill=p.skin)


def draw_garment_details(d: ImageDraw.ImageDraw, p: Person, f: Figure):
    """What tells the garment types apart, in a darker shade of the garment."""
    gar = _darker(p.rgb["upper"], 0.65)
    thin = max(1, int(f.u * 0.007))
    if p.upper == "hoodie":
        _draw_hoodie(d, f, gar, thin)
    if f.view == "front":
        _draw_front(d, p, f, gar, thin)


def draw_arm(d: ImageDraw.ImageDraw, p: Person, f: Figure, pose: Pose, i: int, sleeve):
    """Arm ``i``: in a long sleeve of colour ``sleeve`` with the hand showing, else bare skin
    under a short sleeve or none."""
    s, e, h = pose.shoulders[i], pose.elbows[i], pose.hands[i]
    arm_w, skin = f.arm_w, p.skin
    if p.sleeves == "long" and p.upper != "dress":
        _limb(d, s, e, arm_w, arm_w * 0.9, sleeve)
        _limb(d, e, _lerp(e, h, 0.85), arm_w * 0.9, arm_w * 0.8, sleeve)
        d.ellipse([h[0] - arm_w * 0.42, h[1] - arm_w * 0.42, h[0] + arm_w * 0.42,
                   h[1] + arm_w * 0.42], fill=skin)
    else:
        _limb(d, s, e, arm_w * 0.85, arm_w * 0.75, skin)
        _limb(d, e, h, arm_w * 0.75, arm_w * 0.7, skin)
        if p.sleeves == "short":
            _limb(d, s, _lerp(s, e, 0.55), arm_w * 1.05, arm_w, sleeve)
