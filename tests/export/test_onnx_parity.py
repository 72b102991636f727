"""Every registered method's encoders, exported by the project's own exporter, give on ONNX Runtime
what torch gives, on a batch of another size (and caption length, where that axis is dynamic) than traced."""
import pytest
import torch
import torch.nn.functional as F

from export.to_onnx import encoder_specs, export_encoder
from trainer.heads import METHODS
from trainer.model import load_config
from trainer.retriever import Retriever

SMALL_ARGS = {"esa": {"slots": 2, "iterations": 2},
              "sen": {"decoder_width": 64, "decoder_layers": 1, "decoder_heads": 4},
              "ssan": {"resnet_layers": [1, 1, 1, 1], "resnet_width": 8, "word_dim": 32, "part_dim": 32,
                       "relation_dim": 16}}
VOCAB, CONTEXT = 64, 77
EOT = VOCAB - 1


def _batch(spec: dict, g: torch.Generator) -> torch.Tensor:
    """5 items: pixels, or captions ending at different places (one filling the whole row), padded with 0."""
    (inp,) = spec["inputs"]
    if inp["dtype"] == "float32":
        return torch.randn(5, *inp["shape"][1:], generator=g)
    length = 23 if inp["shape"][1] == -1 else inp["shape"][1]
    ids = torch.randint(1, EOT - 1, (5, length), generator=g, dtype=torch.int32)
    for row, end in enumerate((0, 3, 9, length - 2, length - 1)):
        ids[row, end], ids[row, end + 1:] = EOT, 0
    return ids


# torch's note on LSTMs traced at batch 2: the batch of 5 below is the check that it does not bite
@pytest.mark.filterwarnings("ignore:Exporting a model to ONNX with a batch_size other than 1")
@pytest.mark.parametrize("method", METHODS)
def test_encoders_export_and_match_onnxruntime(method, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    config = load_config("tiny")
    config.text.vocab_size = VOCAB
    torch.manual_seed(0)
    model = Retriever(config, method, num_classes=6, eot_id=EOT, args=SMALL_ARGS.get(method)).eval()
    g = torch.Generator().manual_seed(1)
    for name, spec in encoder_specs(model, CONTEXT).items():
        with torch.no_grad():
            path = export_encoder(model, name, spec, tmp_path / spec["file"], EOT)
            x = _batch(spec, g)
            want = model.encode_text(x) if name == "text_encoder" else model.encode_image(x)
        got = torch.from_numpy(ort.InferenceSession(str(path)).run(None, {spec["inputs"][0]["name"]: x.numpy()})[0])
        assert got.shape == (5, model.set_size, model.clip.config.embed_dim), name
        assert (got - want).abs().max() < 1e-4, name
        assert torch.allclose(F.normalize(got, dim=-1), got, atol=1e-5), name
