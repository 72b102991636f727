"""One image of a person: background, maybe a passer-by cut by the edge, the person, then
downscaling, blur, lighting and sensor noise."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from trainer.data.synthetic.attributes import Person, _pick, sample_person
from trainer.data.synthetic.render.background import _background
from trainer.data.synthetic.render.person import _draw_person


def _render(p: Person, rng: np.random.Generator,
            size: tuple[int, int]) -> tuple[Image.Image, str]:
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
    """Downscale the supersampled canvas to ``size`` (H, W), maybe blur, relight, add noise."""
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
