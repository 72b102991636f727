"""An imported IRRA checkpoint, end to end: tbps import -> export -> gallery -> repository -> a real
tritonserver, searched by text and by image; the answers are the in-process computation with IRRA's
preprocessing (bilinear), which the server's image decoder reads from the export manifest."""
import io

import numpy as np
import pytest
import torch

import kernels
from export.build_gallery import build_gallery
from export.gallery import load_gallery
from export.ort_encoders import OnnxEncoders
from export.to_onnx import export_onnx
from serving.client import SearchClient
from serving.launch import TritonServer
from serving.repository import write_repository
from tests.trainer.test_import_irra import SIZE, write_irra
from trainer.checkpoint import load_checkpoint
from trainer.data.formats import load_dataset
from trainer.data.pixels import Preprocess
from trainer.data.transforms import load_image
from trainer.import_irra import import_irra

pytestmark = pytest.mark.slow


def test_imported_irra_checkpoint_is_served(synthetic_data, tmp_path):
    path, merges, _ = write_irra(tmp_path)
    ckpt_dir, _ = import_irra(path, tmp_path / "ckpt", merges, SIZE)
    export = export_onnx(ckpt_dir, tmp_path / "onnx").parent
    gallery = build_gallery(ckpt_dir, tmp_path / "gallery", data=synthetic_data, split="test", progress=False)
    repo = write_repository(export, gallery, tmp_path / "repo", max_batch_size=8)
    entries = load_dataset(synthetic_data).test
    texts = [entries[0].captions[0], entries[3].captions[0]]
    png = io.BytesIO()
    load_image(entries[2].path).save(png, format="PNG")
    with TritonServer(repo) as server, SearchClient(server.grpc_url) as client:
        by_text, by_image = client.search(texts, k=4), client.search_images(png.getvalue(), k=4)

    encoders, g = OnnxEncoders(export), load_gallery(gallery)
    ckpt = load_checkpoint(ckpt_dir)
    queries = {"text": encoders.encode_text(ckpt.tokenizer(texts)),
               "image": encoders.encode_image(Preprocess(SIZE, "bilinear")(load_image(entries[2].path))[None])}
    for hits, sets in ((by_text, queries["text"]), (by_image, queries["image"])):
        scores, index = kernels.search(torch.from_numpy(sets), g.sets.float(), 4, alpha=g.alpha, weight=g.weight)
        assert [[h.index for h in row] for row in hits] == index.tolist()
        np.testing.assert_allclose([[h.score for h in row] for row in hits], scores.numpy(), atol=1e-5)
    assert by_image[0][0].index == 2  # the image finds itself first: same pixels as the gallery's
