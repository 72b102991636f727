"""The head: hair that falls behind the body, neck, face, hair on the head, hat."""
from __future__ import annotations

from PIL import ImageDraw

from trainer.data.synthetic.attributes import Person
from trainer.data.synthetic.render.figure import Figure
from trainer.data.synthetic.render.shapes import _darker, _limb


def draw_hair_behind(d: ImageDraw.ImageDraw, p: Person, f: Figure):
    """Long hair seen from the front hangs behind the shoulders: drawn before the body."""
    if p.hair_style == "long" and f.view == "front":
        hx, hrx = f.hx, f.hrx
        d.rounded_rectangle([hx - hrx * 1.25, f.y_head - f.hry * 1.05, hx + hrx * 1.25,
                             f.y_sh + 0.07 * f.u], radius=hrx * 0.8, fill=p.rgb["hair"])


def draw_head(d: ImageDraw.ImageDraw, p: Person, f: Figure):
    """Neck, a hoodie's hood around it, the head, and eyes (front) or nose (side)."""
    u, hx, y_head, hrx, hry, skin = f.u, f.hx, f.y_head, f.hrx, f.hry, p.skin
    d.rectangle([hx - 0.022 * u, y_head + hry * 0.6, hx + 0.022 * u, f.y_sh + 0.01 * u], fill=skin)
    if p.upper == "hoodie" and f.view != "back":
        d.chord([hx - 0.05 * u, f.y_sh - 0.025 * u, hx + 0.05 * u, f.y_sh + 0.035 * u], 180, 360,
                fill=_darker(f.body, 0.85))
    d.ellipse([hx - hrx, y_head - hry, hx + hrx, y_head + hry], fill=skin)
    if f.view == "front":
        ey = y_head - hry * 0.05
        er = max(0.8, 0.008 * u)
        for sx in (-0.4, 0.4):
            d.ellipse([hx + sx * hrx - er, ey - er, hx + sx * hrx + er, ey + er], fill=(40, 30, 30))
    elif f.side:
        d.ellipse([hx + f.face * hrx * 0.85 - 0.01 * u, y_head - 0.005 * u,
                   hx + f.face * hrx * 0.85 + 0.012 * u, y_head + 0.015 * u], fill=skin)


def _hair_box(f: Figure) -> list[float]:
    return [f.hx - f.hrx * 1.08, f.y_head - f.hry * 1.12, f.hx + f.hrx * 1.08,
            f.y_head + f.hry * 0.95]


def _draw_hair_back(d: ImageDraw.ImageDraw, p: Person, f: Figure, hair):
    u, hx, y_head, hrx, hry = f.u, f.hx, f.y_head, f.hrx, f.hry
    if p.hair_style == "long":
        d.rounded_rectangle([hx - hrx * 1.2, y_head - hry * 1.1, hx + hrx * 1.2,
                             f.y_sh + 0.1 * u], radius=hrx * 0.8, fill=hair)
    else:
        d.ellipse(_hair_box(f), fill=hair)
        if p.hair_style == "ponytail":
            _limb(d, (hx, y_head), (hx, f.y_sh + 0.035 * u), 0.04 * u, 0.022 * u, hair)


def _draw_hair_side(d: ImageDraw.ImageDraw, p: Person, f: Figure, hair):
    u, hx, y_head, hrx, hry, face = f.u, f.hx, f.y_head, f.hrx, f.hry, f.face
    box = _hair_box(f)
    d.pieslice(box, 180, 360, fill=hair)
    back = [hx - face * hrx * 1.1, y_head - hry * 0.2]
    if face == 1:                              # the back of the head
        d.pieslice(box, 90, 270, fill=hair)
    else:
        d.pieslice(box, 270, 450, fill=hair)
    if p.hair_style == "long":
        d.rounded_rectangle([min(hx - face * hrx * 1.15, hx), y_head - hry * 0.3,
                             max(hx - face * hrx * 1.15, hx), f.y_sh + 0.06 * u],
                            radius=hrx * 0.4, fill=hair)
    elif p.hair_style == "ponytail":
        _limb(d, (back[0], back[1]), (back[0] - face * 0.02 * u, f.y_sh + 0.02 * u),
              0.035 * u, 0.02 * u, hair)


def _draw_hair_front(d: ImageDraw.ImageDraw, p: Person, f: Figure, hair):
    box, y_head, hrx, hry = _hair_box(f), f.y_head, f.hrx, f.hry
    d.chord([box[0], box[1], box[2], y_head + hry * 0.3], 180, 360, fill=hair)
    if p.hair_style in ("long", "ponytail"):
        d.rectangle([box[0], y_head - hry * 0.4, box[0] + hrx * 0.28, y_head + hry * 0.5],
                    fill=hair)
        d.rectangle([box[2] - hrx * 0.28, y_head - hry * 0.4, box[2], y_head + hry * 0.5],
                    fill=hair)


def draw_hair(d: ImageDraw.ImageDraw, p: Person, f: Figure):
    """Hair on the head, as seen from the view (nothing for a bald head)."""
    if p.hair_style == "bald":
        return
    if f.view == "back":
        _draw_hair_back(d, p, f, p.rgb["hair"])
    elif f.side:
        _draw_hair_side(d, p, f, p.rgb["hair"])
    else:
        _draw_hair_front(d, p, f, p.rgb["hair"])


def draw_hat(d: ImageDraw.ImageDraw, p: Person, f: Figure):
    """A cap with its peak towards the view, or a beanie with a turned-up brim."""
    if p.hat == "none":
        return
    hx, y_head, hrx, hry, face = f.hx, f.y_head, f.hrx, f.hry, f.face
    hc = p.rgb["hat"]
    if p.hat == "cap":
        d.chord([hx - hrx * 1.1, y_head - hry * 1.2, hx + hrx * 1.1, y_head + hry * 0.2],
                180, 360, fill=hc)
        if f.side:
            d.polygon([(hx, y_head - hry * 0.4), (hx + face * hrx * 1.9, y_head - hry * 0.3),
                       (hx + face * hrx * 1.9, y_head - hry * 0.15), (hx, y_head - hry * 0.1)],
                      fill=_darker(hc, 0.85))
        elif f.view == "front":
            d.ellipse([hx - hrx * 1.2, y_head - hry * 0.55, hx + hrx * 1.2,
                       y_head - hry * 0.15], fill=_darker(hc, 0.85))
    else:
        d.chord([hx - hrx * 1.12, y_head - hry * 1.35, hx + hrx * 1.12, y_head + hry * 0.15],
                180, 360, fill=hc)
        d.rectangle([hx - hrx * 1.12, y_head - hry * 0.5, hx + hrx * 1.12, y_head - hry * 0.18],
                    fill=_darker(hc, 0.8))
