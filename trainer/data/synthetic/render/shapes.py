"""Colour and geometry helpers shared by the body-part drawings."""
from __future__ import annotations

import math

from PIL import ImageDraw


def _darker(c, f=0.7):
    return tuple(int(v * f) for v in c)


def _mix(a, b, t):
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))


def _lerp(a, b, t):
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


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
