"""Images to the encoders' pixels, in numpy: resize to (H, W) with the model's filter, to [0, 1],
normalise. The eval transform is exactly this; the train transform (transforms.py) adds its
augmentation between the two steps. Torch-free, so the server's image decoding starts light.

`Preprocess` is the record of these choices that travels with a model: the checkpoint's
config.json "image" entry, copied into the export manifest, read by training, evaluation, the
gallery builder and the server's image decoder alike. A record without "resize" (checkpoints
written before it was recorded) means bicubic, what those models were trained with.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# PIL's filters; torchvision's Resize on a PIL image calls PIL's resize with its default, bilinear
RESIZE_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes pixels: size (H, W), resize filter, per-channel mean and std."""
    size: tuple[int, int]
    resize: str = "bicubic"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self):
        try:
            h, w = (int(v) for v in self.size)
        except (TypeError, ValueError):
            raise ValueError(f"image size must be a pair of integers (H, W), got {self.size!r}") from None
        if h < 1 or w < 1:
            raise ValueError(f"image size must be positive, got {self.size!r}")
        if self.resize not in RESIZE_FILTERS:
            raise ValueError(f"unknown resize filter {self.resize!r}; known: {', '.join(RESIZE_FILTERS)}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std must be 3 numbers each, std positive; got {self.mean!r}, {self.std!r}")
        object.__setattr__(self, "size", (h, w))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @classmethod
    def from_record(cls, image: dict) -> Preprocess:
        """The preprocessing of a checkpoint's (or manifest's) "image" record."""
        return cls(tuple(image["size"]), image.get("resize", "bicubic"), tuple(image["mean"]), tuple(image["std"]))

    def record(self) -> dict:
        return {"size": list(self.size), "resize": self.resize, "mean": list(self.mean), "std": list(self.std)}

    def resized_uint8(self, img: Image.Image) -> np.ndarray:
        """uint8 [3, H, W] of an image resized to `size`."""
        h, w = self.size
        if img.mode != "RGB":
            img = img.convert("RGB")
        if img.size != (w, h):
            img = img.resize((w, h), RESIZE_FILTERS[self.resize])
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """float32 [3, H, W], normalised, of uint8 [3, H, W]."""
        mean = np.array(self.mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.array(self.std, dtype=np.float32).reshape(3, 1, 1)
        return np.ascontiguousarray((x.astype(np.float32) / np.float32(255.0) - mean) / std)

    def __call__(self, img: Image.Image) -> np.ndarray:
        """The eval pixels of an image: float32 [3, H, W]."""
        return self.normalize(self.resized_uint8(img))
