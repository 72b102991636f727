"""Image loading and the train / eval image transforms, without torchvision.

Eval: resize to (H, W) with the model's filter, to a float tensor in [0, 1], normalise (the
numpy steps of trainer/data/pixels.py's `Preprocess`, which the server decodes with).

Train (IRRA's augmentation): resize, random horizontal flip (``flip_p``), zero-pad by ``pad``
pixels on every side then random-crop back to (H, W) (torchvision ``Pad`` + ``RandomCrop``: the
padding is black before normalisation), to tensor, normalise, then random erasing with
torchvision's ``RandomErasing`` semantics (probability ``erase_p``, area 2 % to ``erase_max`` of
the image, aspect ratio 0.3-3.3 drawn log-uniformly, up to 10 tries). The erased rectangle is
filled with ``erase_fill``: "zero" writes zeros in normalised space, i.e. the mean colour
(tbps; torchvision's ``value=0``); "mean" writes the mean's numbers themselves into the
normalised tensor, a light grey, as IRRA's ``RandomErasing(scale=(0.02, 0.4), value=mean)`` does.

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

from trainer.data.pixels import CLIP_MEAN, CLIP_STD, Preprocess

__all__ = ["CLIP_MEAN", "CLIP_STD", "load_image", "build_transform", "ImageTransform"]


_ERASE_MIN = 0.02
_ERASE_RATIO = (0.3, 3.3)
ERASE_FILLS = ("zero", "mean")


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

    def __init__(self, preprocess: Preprocess, train: bool, flip_p: float = 0.5, pad: int = 10,
                 erase_p: float = 0.5, erase_max: float = 0.33, erase_fill: str = "zero",
                 generator: torch.Generator | None = None):
        if not _ERASE_MIN <= float(erase_max) < 1.0:
            raise ValueError(f"erase_max must be an area fraction in [{_ERASE_MIN}, 1), got {erase_max!r}")
        if erase_fill not in ERASE_FILLS:
            raise ValueError(f"erase_fill must be one of {', '.join(ERASE_FILLS)}, got {erase_fill!r}")
        for name, p in (("flip_p", flip_p), ("erase_p", erase_p)):
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
        if isinstance(pad, bool) or int(pad) != pad or pad < 0:
            raise ValueError(f"pad must be a non-negative integer, got {pad!r}")
        self.preprocess, self.size = preprocess, preprocess.size
        self.train = bool(train)
        self.flip_p, self.erase_p, self.pad = float(flip_p), float(erase_p), int(pad)
        self.erase_max, self.erase_fill = float(erase_max), erase_fill
        self.generator = generator

    def __repr__(self) -> str:
        if not self.train:
            return f"ImageTransform({self.preprocess}, eval)"
        return (f"ImageTransform({self.preprocess}, train, flip_p={self.flip_p}, pad={self.pad}, "
                f"erase_p={self.erase_p}, erase_max={self.erase_max}, erase_fill={self.erase_fill})")

    def _rand(self) -> float:
        return torch.rand(1, generator=self.generator).item()

    def _randint(self, high: int) -> int:
        """Uniform in [0, high)."""
        return int(torch.randint(0, high, (1,), generator=self.generator).item())

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if not isinstance(img, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(img).__name__}")
        h, w = self.size
        x = torch.from_numpy(self.preprocess.resized_uint8(img))
        if self.train:
            if self._rand() < self.flip_p:
                x = x.flip(-1)
            if self.pad:
                p = self.pad
                padded = torch.zeros(3, h + 2 * p, w + 2 * p, dtype=torch.uint8)
                padded[:, p:p + h, p:p + w] = x
                i, j = self._randint(2 * p + 1), self._randint(2 * p + 1)
                x = padded[:, i:i + h, j:j + w]
        x = torch.from_numpy(self.preprocess.normalize(x.numpy()))
        if self.train and self._rand() < self.erase_p:
            self._erase(x)
        return x

    def _erase(self, x: torch.Tensor) -> None:
        """torchvision RandomErasing.get_params, in place (its float32 log and exp included, so the
        rounding of the rectangle's sides is the same)."""
        _, h, w = x.shape
        area = h * w
        log_lo, log_hi = torch.log(torch.tensor(_ERASE_RATIO)).tolist()
        for _ in range(10):
            target = area * torch.empty(1).uniform_(_ERASE_MIN, self.erase_max, generator=self.generator).item()
            aspect = torch.exp(torch.empty(1).uniform_(log_lo, log_hi, generator=self.generator)).item()
            eh = int(round(math.sqrt(target * aspect)))
            ew = int(round(math.sqrt(target / aspect)))
            if not (eh < h and ew < w):
                continue
            i, j = self._randint(h - eh + 1), self._randint(w - ew + 1)
            fill = self.preprocess.mean if self.erase_fill == "mean" else (0.0, 0.0, 0.0)
            x[:, i:i + eh, j:j + ew] = torch.tensor(fill).view(3, 1, 1)
            return


def build_transform(preprocess: Preprocess | tuple[int, int], train: bool, *, flip_p: float = 0.5,
                    pad: int = 10, erase_p: float = 0.5, erase_max: float = 0.33, erase_fill: str = "zero",
                    generator: torch.Generator | None = None) -> ImageTransform:
    """The train (augmenting) or eval transform of a model's preprocessing; a bare (H, W) size
    means the default preprocessing at that size.

    ``pad`` is in output pixels; IRRA uses 10 at 384 x 128, so callers with small images should
    scale it (e.g. ``max(1, round(10 * H / 384))``). The augmentation's arguments only matter when
    ``train``.
    """
    if not isinstance(preprocess, Preprocess):
        preprocess = Preprocess(preprocess)
    return ImageTransform(preprocess, train, flip_p, pad, erase_p, erase_max, erase_fill, generator)
