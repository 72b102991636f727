"""Image loading and the train / eval image transforms, without torchvision.

Eval: resize to (H, W) with PIL bicubic, to a float tensor in [0, 1], CLIP-normalise (the
numpy steps of trainer/data/pixels.py, which the server decodes with).

Train (IRRA's recipe): resize, random horizontal flip (``flip_p``), zero-pad by ``pad`` pixels on
every side then random-crop back to (H, W) (torchvision ``Pad`` + ``RandomCrop``: the padding is
black before normalisation), to tensor, normalise, then random erasing with torchvision's
``RandomErasing`` semantics (probability ``erase_p``, area 2-33 % of the image, aspect ratio
0.3-3.3 drawn log-uniformly, up to 10 tries). The erased rectangle is filled with **zeros in
normalised space**, i.e. the CLIP mean colour (torchvision's ``value=0``; not random noise).

All randomness comes from torch's global RNG (``torch.rand`` / ``torch.randint``), or from
``generator`` when one is given, so restoring ``torch.get_rng_state()`` replays the augmentation
exactly (and DataLoader workers, whose torch RNG is seeded per worker, stay reproducible).
The transforms are plain picklable objects, so they work with any DataLoader start method
(as long as no generator is attached).
"""
from __future__ import annotations

import math
import os

import torch
from PIL import Image

from trainer.data.pixels import CLIP_MEAN, CLIP_STD, normalize, resized_uint8

__all__ = ["CLIP_MEAN", "CLIP_STD", "load_image", "build_transform", "ImageTransform"]


_ERASE_SCALE = (0.02, 0.33)
_ERASE_RATIO = (0.3, 3.3)


def load_image(path: str | os.PathLike) -> Image.Image:
    """The image at ``path`` as an RGB PIL image (fully decoded). Errors name the file."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} does not exist") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise OSError(f"cannot decode image {path}: {e}") from e


class ImageTransform:
    """PIL image -> float32 tensor [3, H, W], CLIP-normalised; see the module docstring."""

    def __init__(self, image_size: tuple[int, int], train: bool, flip_p: float = 0.5,
                 pad: int = 10, erase_p: float = 0.5, generator: torch.Generator | None = None):
        try:
            h, w = (int(v) for v in image_size)
        except (TypeError, ValueError):
            raise ValueError(f"image_size must be a pair of integers (H, W), got {image_size!r}") from None
        if h < 1 or w < 1:
            raise ValueError(f"image_size must be positive, got {image_size!r}")
        for name, p in (("flip_p", flip_p), ("erase_p", erase_p)):
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
        if isinstance(pad, bool) or int(pad) != pad or pad < 0:
            raise ValueError(f"pad must be a non-negative integer, got {pad!r}")
        self.size = (h, w)
        self.train = bool(train)
        self.flip_p, self.erase_p, self.pad = float(flip_p), float(erase_p), int(pad)
        self.generator = generator

    def __repr__(self) -> str:
        if not self.train:
            return f"ImageTransform(size={self.size}, eval)"
        return (f"ImageTransform(size={self.size}, train, flip_p={self.flip_p}, pad={self.pad}, "
                f"erase_p={self.erase_p})")

    def _rand(self) -> float:
        return torch.rand(1, generator=self.generator).item()

    def _randint(self, high: int) -> int:
        """Uniform in [0, high)."""
        return int(torch.randint(0, high, (1,), generator=self.generator).item())

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if not isinstance(img, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(img).__name__}")
        h, w = self.size
        x = torch.from_numpy(resized_uint8(img, self.size))
        if self.train:
            if self._rand() < self.flip_p:
                x = x.flip(-1)
            if self.pad:
                p = self.pad
                padded = torch.zeros(3, h + 2 * p, w + 2 * p, dtype=torch.uint8)
                padded[:, p:p + h, p:p + w] = x
                i, j = self._randint(2 * p + 1), self._randint(2 * p + 1)
                x = padded[:, i:i + h, j:j + w]
        x = torch.from_numpy(normalize(x.numpy()))
        if self.train and self._rand() < self.erase_p:
            self._erase(x)
        return x

    def _erase(self, x: torch.Tensor) -> None:
        """torchvision RandomErasing.get_params, filling with 0 (in place)."""
        _, h, w = x.shape
        area = h * w
        log_lo, log_hi = math.log(_ERASE_RATIO[0]), math.log(_ERASE_RATIO[1])
        for _ in range(10):
            target = area * torch.empty(1).uniform_(*_ERASE_SCALE, generator=self.generator).item()
            aspect = math.exp(torch.empty(1).uniform_(log_lo, log_hi, generator=self.generator).item())
            eh = int(round(math.sqrt(target * aspect)))
            ew = int(round(math.sqrt(target / aspect)))
            if not (eh < h and ew < w):
                continue
            i, j = self._randint(h - eh + 1), self._randint(w - ew + 1)
            x[:, i:i + eh, j:j + ew] = 0.0
            return


def build_transform(image_size: tuple[int, int], train: bool, *, flip_p: float = 0.5,
                    pad: int = 10, erase_p: float = 0.5,
                    generator: torch.Generator | None = None) -> ImageTransform:
    """The train (augmenting) or eval transform for images of ``image_size`` = (H, W).

    ``pad`` is in output pixels; IRRA uses 10 at 384 x 128, so callers with small images should
    scale it (e.g. ``max(1, round(10 * H / 384))``). flip_p / pad / erase_p only matter when
    ``train``.
    """
    return ImageTransform(image_size, train, flip_p, pad, erase_p, generator)
