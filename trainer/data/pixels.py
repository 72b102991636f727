"""Images to the encoders' pixels, in numpy: resize to (H, W) with PIL bicubic, to [0, 1],
CLIP-normalise. The eval transform is exactly this; the train transform (transforms.py) adds
its augmentation between the two steps. Torch-free, so the server's image decoding starts light.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_MEAN = np.array(CLIP_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD = np.array(CLIP_STD, dtype=np.float32).reshape(3, 1, 1)


def resized_uint8(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """uint8 [3, H, W] of an image resized to `size` = (H, W)."""
    h, w = size
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (w, h):
        img = img.resize((w, h), Image.BICUBIC)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def normalize(x: np.ndarray) -> np.ndarray:
    """float32 [3, H, W], CLIP-normalised, of uint8 [3, H, W]."""
    return np.ascontiguousarray((x.astype(np.float32) / np.float32(255.0) - _MEAN) / _STD)


def eval_pixels(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return normalize(resized_uint8(img, size))
