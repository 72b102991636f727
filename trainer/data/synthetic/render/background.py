"""The street behind a pedestrian: sky, wall, ground, texture, clutter, coloured objects."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from trainer.data.synthetic.attributes import _NAMES, Person, _pick, _shade


def _muted(rng: np.random.Generator) -> np.ndarray:
    """A random colour halfway to grey, like walls, roads and sky."""
    c = rng.uniform(40, 210, 3)
    return c * 0.55 + c.mean() * 0.45


def _backdrop(rng: np.random.Generator, w: int, h: int) -> tuple[Image.Image, float]:
    """Sky fading into a wall, a horizon, ground below; blotchy texture; and the horizon's y."""
    sky, wall, ground = _muted(rng), _muted(rng), _muted(rng) * rng.uniform(0.7, 1.0)
    horizon = rng.uniform(0.55, 0.85) * h
    ys = np.arange(h, dtype=np.float64)[:, None]
    t = np.clip((ys - horizon) / (0.08 * h) + 0.5, 0, 1)       # wall -> ground
    g = np.clip(ys / horizon, 0, 1)
    top = sky[None] * (1 - g) + wall[None] * g
    img = top * (1 - t) + ground[None] * t
    img = np.repeat(img[:, None, :], w, axis=1)
    gh, gw = int(rng.integers(3, 9)), int(rng.integers(2, 5))
    tex = Image.fromarray(rng.uniform(0, 255, (gh, gw)).astype(np.uint8)).resize((w, h),
                                                                                  Image.BILINEAR)
    img += (np.asarray(tex, np.float64)[..., None] - 128) * rng.uniform(0.05, 0.25)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), horizon


def _draw_clutter(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int,
                  horizon: float):
    """Fine clutter: edges and windows (near-vertical lines), pavement joints below the horizon."""
    for _ in range(int(rng.integers(3, 12))):
        c = tuple(int(v) for v in np.clip(_muted(rng) * rng.uniform(0.5, 1.2), 0, 255))
        if rng.random() < 0.5:
            x = rng.uniform(0, w)
            d.line([(x, rng.uniform(0, h * 0.3)),
                    (x + rng.normal(0, w * 0.05), rng.uniform(h * 0.4, h))],
                   fill=c, width=int(rng.integers(1, 4)))
        else:
            y = rng.uniform(horizon, h)
            d.line([(0, y), (w, y + rng.normal(0, h * 0.03))], fill=c,
                   width=int(rng.integers(1, 3)))


def _draw_objects(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int,
                  person: Person):
    """Signs, cars, shop fronts, bins in palette colours, sometimes the person's own: a
    colour in the crop need not be on the person."""
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


def _background(rng: np.random.Generator, w: int, h: int, person: Person) -> Image.Image:
    """Gradient + large-scale texture + clutter objects, some in clothing colours."""
    out, horizon = _backdrop(rng, w, h)
    d = ImageDraw.Draw(out)
    _draw_clutter(d, rng, w, h, horizon)
    _draw_objects(d, rng, w, h, person)
    return out
