"""What a person carries: backpack, handbag, shoulder bag, phone, umbrella (open or closed).

A backpack is drawn in layers (behind the body, on the back, straps over the torso), so each
function here is one layer and ``_draw_person`` calls it at its depth.
"""
from __future__ import annotations

from PIL import ImageDraw

from trainer.data.synthetic.attributes import Person
from trainer.data.synthetic.render.figure import Figure, Pose
from trainer.data.synthetic.render.shapes import _darker, _lerp, _limb


def draw_backpack_behind(d: ImageDraw.ImageDraw, p: Person, f: Figure):
    """Seen from the side, the backpack sticks out behind the body."""
    if p.bag == "backpack" and f.side:
        u = f.u
        bx = f.cx - f.face * (f.sw / 2 + 0.045 * u)
        d.rounded_rectangle([bx - 0.055 * u, f.y_sh + 0.02 * u, bx + 0.055 * u,
                             f.y_waist + 0.03 * u], radius=0.02 * u, fill=p.rgb["bag"])


def draw_backpack(d: ImageDraw.ImageDraw, p: Person, f: Figure):
    """Over the torso: the pack and its pocket from the back, its straps from the front or side."""
    if p.bag != "backpack":
        return
    u, cx, sw, y_sh, bagc = f.u, f.cx, f.sw, f.y_sh, p.rgb["bag"]
    if f.view == "back":
        bw = sw * 0.78
        d.rounded_rectangle([cx - bw / 2, y_sh + 0.03 * u, cx + bw / 2, f.y_hip - 0.04 * u],
                            radius=0.03 * u, fill=bagc)
        d.rounded_rectangle([cx - bw * 0.35, f.y_waist - 0.04 * u, cx + bw * 0.35,
                             f.y_hip - 0.06 * u], radius=0.015 * u, fill=_darker(bagc, 0.8))
    if f.view == "front":
        wid = max(1, int(u * 0.018))
        for sx in (-1, 1):
            d.line([(cx + sx * sw * 0.3, y_sh), (cx + sx * sw * 0.28, f.y_waist - 0.03 * u)],
                   fill=bagc, width=wid)
    if f.side:
        d.line([(cx - f.face * 0.005 * u, y_sh), (cx - f.face * 0.02 * u, f.y_waist - 0.04 * u)],
               fill=bagc, width=max(1, int(u * 0.016)))


def draw_strap(d: ImageDraw.ImageDraw, p: Person, f: Figure, pose: Pose):
    """A shoulder bag's strap across the torso, down to the side of the bag hand."""
    if p.bag != "shoulder bag":
        return
    u, cx, y_sh, y_hip, bagc = f.u, f.cx, f.y_sh, f.y_hip, p.rgb["bag"]
    wid = max(1, int(u * 0.014))
    if f.side:
        d.line([(cx, y_sh + 0.01 * u), (cx + f.face * 0.02 * u, y_hip - 0.06 * u)], fill=bagc,
               width=wid)
    else:
        sx = cx - f.sw * 0.38 if pose.bag_hand else cx + f.sw * 0.38
        bx = cx + f.hw * 0.6 if pose.bag_hand else cx - f.hw * 0.6
        d.line([(sx, y_sh + 0.005 * u), (bx, y_hip - 0.06 * u)], fill=bagc, width=wid)


def draw_bag_body(d: ImageDraw.ImageDraw, p: Person, f: Figure, pose: Pose):
    """A handbag hanging from its hand, or a shoulder bag at the hip."""
    u, bagc = f.u, p.rgb["bag"]
    if p.bag == "handbag":
        h = pose.hands[pose.bag_hand]
        bw, bh = 0.085 * u, 0.07 * u
        d.arc([h[0] - bw * 0.3, h[1] - bh * 0.2, h[0] + bw * 0.3, h[1] + bh * 0.5], 180, 360,
              fill=_darker(bagc), width=max(1, int(u * 0.008)))
        d.polygon([(h[0] - bw * 0.4, h[1] + bh * 0.15), (h[0] + bw * 0.4, h[1] + bh * 0.15),
                   (h[0] + bw * 0.5, h[1] + bh), (h[0] - bw * 0.5, h[1] + bh)], fill=bagc)
    elif p.bag == "shoulder bag":
        cx, hw = f.cx, f.hw
        if f.side:
            bx = cx + f.face * 0.02 * u
        else:
            bx = cx + (hw * 0.65 if pose.bag_hand else -hw * 0.65)
        by = f.y_hip - 0.02 * u
        bw, bh = 0.1 * u, 0.08 * u
        d.rectangle([bx - bw / 2, by - bh / 2, bx + bw / 2, by + bh / 2], fill=bagc)
        d.line([(bx - bw / 2, by - bh / 6), (bx + bw / 2, by - bh / 6)], fill=_darker(bagc),
               width=max(1, int(u * 0.006)))


def draw_phone(d: ImageDraw.ImageDraw, p: Person, f: Figure, pose: Pose):
    if p.carry == "phone":
        u, h = f.u, pose.hands[pose.carry_hand]
        d.rectangle([h[0] - 0.012 * u, h[1] - 0.03 * u, h[0] + 0.012 * u, h[1] + 0.005 * u],
                    fill=p.rgb["carry"])


def draw_closed_umbrella(d: ImageDraw.ImageDraw, p: Person, f: Figure, pose: Pose):
    """A furled umbrella held like a walking stick, its tip on the ground beside the feet."""
    if p.carry == "umbrella" and not pose.umbrella_open:
        u, h, hand = f.u, pose.hands[pose.carry_hand], pose.carry_hand
        tip = (h[0] + (f.face if f.side else (-1 if hand == 0 else 1)) * 0.06 * u, f.y_foot)
        _limb(d, _lerp(h, tip, 0.12), tip, 0.045 * u, 0.012 * u, p.rgb["carry"])


def draw_open_umbrella(d: ImageDraw.ImageDraw, p: Person, f: Figure, pose: Pose):
    """An open umbrella over the head, on a shaft from the raised hand."""
    if pose.umbrella_open:
        u, h = f.u, pose.hands[pose.carry_hand]
        r = 0.2 * u
        ux = h[0]
        uy = min(h[1], f.y_head - f.hry * 1.3)
        d.line([h, (ux, uy)], fill=(60, 60, 60), width=max(1, int(u * 0.01)))
        d.chord([ux - r, uy - r * 0.55, ux + r, uy + r * 0.55], 180, 360, fill=p.rgb["carry"])
