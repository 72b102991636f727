"""Encoded image files sent to the server (search by image, ingest): checked, decoded and put
through the checkpoint's eval transform. Every refusal is a RequestError naming the image and
the problem, raised before any pixel is decoded where the header already tells. Torch-free."""
from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image, UnidentifiedImageError

from serving.models.common import RequestError
from trainer.data.pixels import Preprocess

MAX_IMAGE_BYTES = 16 << 20  # a pedestrian crop is tens of kB; a full camera frame a few MB
MIN_SIDE = 8                # below this there is no person to describe
MAX_PIXELS = 50_000_000     # a decompression bomb is refused from its header


class ImageDecoder:
    """Encoded bytes -> float32 pixels [3, H, W] as the image encoder takes them (the eval transform)."""

    def __init__(self, image: str | dict):
        image = json.loads(image) if isinstance(image, str) else image
        self.preprocess = Preprocess.from_record(image)  # the checkpoint's, through the export manifest

    def __call__(self, raw, what: str) -> np.ndarray:
        raw = bytes(raw)
        if not raw:
            raise RequestError(f"{what} is empty (0 bytes)")
        if len(raw) > MAX_IMAGE_BYTES:
            raise RequestError(f"{what} is {len(raw)} bytes; at most {MAX_IMAGE_BYTES} are accepted")
        try:
            with Image.open(io.BytesIO(raw)) as im:
                w, h = im.size
                if min(w, h) < MIN_SIDE or w * h > MAX_PIXELS:
                    raise RequestError(f"{what} is {w}x{h} pixels; images of at least {MIN_SIDE} pixels a side "
                                       f"and at most {MAX_PIXELS} pixels are accepted")
                rgb = im.convert("RGB")
        except UnidentifiedImageError:
            raise RequestError(f"{what} is not an image file this server reads (JPEG, PNG, BMP, WebP, ...)") from None
        except RequestError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise RequestError(f"{what} does not decode as an image ({e})") from None
        return self.preprocess(rgb)
