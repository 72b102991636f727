"""The preprocessing a checkpoint records (resize filter, size, normalisation) is what every stage
that turns an image into pixels applies: evaluation, the gallery builder, the export manifest and the
server's image decoder (search by image, ingest, the page's uploads). A record without a filter
is bicubic, as such checkpoints were trained."""
import io
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from export.build_gallery import build_gallery
from export.gallery import load_gallery
from export.to_onnx import export_onnx
from trainer.checkpoint import load_checkpoint
from trainer.data.formats import load_dataset
from trainer.data.pixels import Preprocess
from trainer.data.transforms import load_image
from trainer.evaluate import encode_split


@pytest.fixture(scope="module")
def bilinear(tiny_run, tmp_path_factory):
    """The tiny run's best checkpoint, its record saying bilinear (the fingerprint covers the weights only)."""
    path = tmp_path_factory.mktemp("bilinear") / "ckpt"
    shutil.copytree(tiny_run / "best", path)
    config = json.loads((path / "config.json").read_text())
    config["image"]["resize"] = "bilinear"
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def image_decoder():
    """serving/models/images.py, importable outside Triton through the bundled backend's utils module."""
    from serving.launch import bundled_server
    sys.path.insert(0, str(bundled_server()[0].parent.parent / "backends" / "python"))
    from serving.models.images import ImageDecoder
    return ImageDecoder


def test_evaluation_and_gallery_read_the_checkpoints_filter(bilinear, synthetic_data, tmp_path):
    ckpt = load_checkpoint(bilinear)
    assert ckpt.model.preprocess == Preprocess((64, 32), "bilinear")
    entries = load_dataset(synthetic_data).test[:4]
    images = [load_image(e.path) for e in entries]  # 64 x 24: resized to 64 x 32, so the filter shows
    with torch.no_grad():
        want, bicubic = (ckpt.model.encode_image(torch.from_numpy(np.stack([Preprocess((64, 32), f)(im) for im in images])))
                         for f in ("bilinear", "bicubic"))
    assert not torch.allclose(want, bicubic, atol=1e-3)
    torch.testing.assert_close(encode_split(ckpt.model, ckpt.tokenizer, entries)[2], want, atol=1e-5, rtol=0)
    gallery = build_gallery(bilinear, tmp_path / "g", data=synthetic_data, split="test", progress=False)
    torch.testing.assert_close(load_gallery(gallery).sets[:4].float(), want, atol=1e-3, rtol=0)


def test_export_manifest_and_image_decoder_carry_the_filter(bilinear, image_decoder, synthetic_data, tmp_path):
    manifest = json.loads(export_onnx(bilinear, tmp_path / "onnx").read_text())
    assert manifest["image"]["resize"] == "bilinear"
    img = load_image(load_dataset(synthetic_data).test[0].path)
    png = io.BytesIO()
    img.save(png, format="PNG")
    decoded = image_decoder(manifest["image"])(np.frombuffer(png.getvalue(), np.uint8), "image 0")
    np.testing.assert_array_equal(decoded, Preprocess((64, 32), "bilinear")(img))
    old = {k: v for k, v in manifest["image"].items() if k != "resize"}  # an export written before the record
    np.testing.assert_array_equal(image_decoder(old)(png.getvalue(), "image 0"), Preprocess((64, 32))(img))
    assert not np.array_equal(Preprocess((64, 32))(img), decoded)
