"""The lower body: legs in the lower garment (or bare), shoes, and the pelvis or skirt."""
from __future__ import annotations

import numpy as np
from PIL import ImageDraw

from trainer.data.synthetic.attributes import Person
from trainer.data.synthetic.render.figure import Figure, Pose
from trainer.data.synthetic.render.shapes import _darker, _lerp, _limb, _mix


def draw_leg(d: ImageDraw.ImageDraw, p: Person, f: Figure, pose: Pose, i: int):
    """Leg ``i`` from hip to foot: trousers and jeans cover it, shorts its top, else skin."""
    lo, leg_w = p.rgb["lower"], f.leg_w
    hip, knee, foot = pose.hips[i], pose.knees[i], pose.feet[i]
    leg_col = lo if p.lower in ("trousers", "jeans") else p.skin
    if f.side and i == 1:                          # a shade darker: the legs overlap
        leg_col = _darker(leg_col, 0.85)
    _limb(d, hip, knee, leg_w, leg_w * 0.85, leg_col)
    _limb(d, knee, foot, leg_w * 0.85, leg_w * 0.7, leg_col)
    if p.lower == "jeans":                         # seams
        d.line([_lerp(hip, knee, 0.3), knee, _lerp(knee, foot, 0.9)],
               fill=_mix(lo, (230, 230, 230), 0.25), width=max(1, int(f.u * 0.005)))
    if p.lower == "shorts":
        _limb(d, hip, _lerp(hip, knee, 0.65), leg_w * 1.1, leg_w * 1.05, lo)


def draw_shoe(d: ImageDraw.ImageDraw, p: Person, f: Figure, pose: Pose, i: int):
    """The shoe of leg ``i``: seen from the side it points the way the person faces."""
    u, (x, y) = f.u, pose.feet[i]
    fl, fh = 0.05 * u, 0.022 * u
    if f.side:
        d.ellipse([x - fl + f.face * 0.025 * u, y - fh, x + fl + f.face * 0.025 * u, y + fh],
                  fill=p.rgb["shoes"])
    else:
        d.ellipse([x - fl * 0.8, y - fh, x + fl * 0.8, y + fh * 1.1], fill=p.rgb["shoes"])


def draw_hips(d: ImageDraw.ImageDraw, p: Person, f: Figure, rng: np.random.Generator):
    """The pelvis in the lower garment's colour, or a skirt of random flare."""
    u, cx, hw, y_hip, lo = f.u, f.cx, f.hw, f.y_hip, p.rgb["lower"]
    if p.lower in ("trousers", "jeans", "shorts"):
        d.polygon([(cx - hw / 2, y_hip - 0.05 * u), (cx + hw / 2, y_hip - 0.05 * u),
                   (cx + hw / 2, y_hip + 0.03 * u), (cx - hw / 2, y_hip + 0.03 * u)], fill=lo)
    elif p.lower == "skirt":
        flare = hw * rng.uniform(0.65, 0.9)
        d.polygon([(cx - hw / 2, y_hip - 0.06 * u), (cx + hw / 2, y_hip - 0.06 * u),
                   (cx + flare, f.top + 0.68 * u), (cx - flare, f.top + 0.68 * u)], fill=lo)
