"""One pedestrian, painted back to front: what is behind the body, legs, torso, arms, head."""
from __future__ import annotations

import numpy as np
from PIL import ImageDraw

from trainer.data.synthetic.attributes import Person
from trainer.data.synthetic.render.carried import (draw_backpack, draw_backpack_behind,
                                                   draw_bag_body, draw_closed_umbrella,
                                                   draw_open_umbrella, draw_phone, draw_strap)
from trainer.data.synthetic.render.figure import measure, sample_pose
from trainer.data.synthetic.render.head import draw_hair, draw_hair_behind, draw_hat, draw_head
from trainer.data.synthetic.render.lower import draw_hips, draw_leg, draw_shoe
from trainer.data.synthetic.render.shapes import _darker
from trainer.data.synthetic.render.upper import draw_arm, draw_garment_details, draw_torso


def _draw_person(d: ImageDraw.ImageDraw, p: Person, rng: np.random.Generator,
                 cx: float, top: float, ph: float, view: str):
    """Draw one pedestrian standing on y = top + ph. view: front | back | left | right."""
    f = measure(p, cx, top, ph, view)
    pose = sample_pose(p, f, rng)
    draw_hair_behind(d, p, f)
    draw_backpack_behind(d, p, f)
    if f.side:                                     # the far arm
        draw_arm(d, p, f, pose, 0, _darker(f.body, 0.8))
    draw_closed_umbrella(d, p, f, pose)
    for i in range(2):
        draw_leg(d, p, f, pose, i)
        draw_shoe(d, p, f, pose, i)
    draw_hips(d, p, f, rng)
    draw_torso(d, p, f, rng)
    draw_garment_details(d, p, f)
    draw_backpack(d, p, f)
    draw_strap(d, p, f, pose)
    for i in ((1,) if f.side else (0, 1)):        # the near arm only, in side views
        draw_arm(d, p, f, pose, i, f.body)
    draw_bag_body(d, p, f, pose)
    draw_phone(d, p, f, pose)
    draw_head(d, p, f)
    draw_hair(d, p, f)
    draw_hat(d, p, f)
    draw_open_umbrella(d, p, f, pose)
