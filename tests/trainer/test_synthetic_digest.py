"""The synthetic dataset is a fixed function of its seed: digests recorded from the generator.

Any change to the drawing, the caption grammar or the order of random draws changes the
digest, so a pure restructuring of trainer/data/synthetic must leave these values alone.

The digest covers the file list, the annotation JSON bytes and the DECODED pixels of every
image, not the JPEG bytes: the encoder's output may change with the libjpeg build while the
decoded pixels are what training sees (a decoder that rounds differently would show up here
too; then re-record the values with that library and say so in the commit). Rendering itself
goes through Pillow's rasteriser and filters, so a new Pillow major version may need new values.
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import PIL
import pytest
from PIL import Image

from trainer.data.synthetic import write_synthetic

# write_synthetic(out, ids=..., seed=0) with the default image size (128 x 48) and 3..5 images
# per person, as `tbps synth` and the demo write it (ids=500, trainer/recipes.py DEMO_IDS).
DEFAULT_DIGEST = "2982a19d0165c7a1e33fc4c4f97cf0560363a572c53550bcec250bf8d628ee88"
FAST_DIGEST = "ab074fa1c0b244d714db65ebc6945cf37536f0bd896cc6cf51b7b7d49e34ef7e"  # ids=24


def dataset_digest(root: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    h.update("\n".join(files).encode())
    h.update((root / "reid_raw.json").read_bytes())
    for e in json.loads((root / "reid_raw.json").read_text(encoding="utf-8")):
        with Image.open(root / "imgs" / e["file_path"]) as im:
            a = np.asarray(im.convert("RGB"))
        h.update(e["file_path"].encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def _check(tmp_path, ids, expected):
    got = dataset_digest(write_synthetic(tmp_path / "d", ids=ids, seed=0, progress=False))
    assert got == expected, f"synthetic dataset changed (Pillow {PIL.__version__}, numpy {np.__version__})"


def test_fast_dataset_digest(tmp_path):
    _check(tmp_path, 24, FAST_DIGEST)


@pytest.mark.slow
def test_default_dataset_digest(tmp_path):
    _check(tmp_path, 500, DEFAULT_DIGEST)
