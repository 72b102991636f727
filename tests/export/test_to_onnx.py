"""ONNX encoders against torch for every method: fp32 within 1e-4, the fp16 graph within
cosine 0.999; graph properties (checker, opset, LayerNormalization, I/O types); the manifest."""
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from export.manifest import ENCODERS, ManifestError, load_manifest
from export.ort_encoders import OnnxEncoders
from export.to_onnx import export_onnx
from trainer.checkpoint import load_checkpoint
from trainer.heads import METHODS

WORDS = "a woman in a red coat with black trousers and white shoes carrying a bag".split()


def captions_of_length(tokenizer, lengths: list[int]) -> list[str]:
    """Captions of exactly `length` BPE tokens each (plus start and end: length + 2 ids)."""
    out = []
    for length in lengths:
        words, i = [], 0
        while len(tokenizer.encode(" ".join(words))) < length:
            words.append(WORDS[i % len(WORDS)])
            i += 1
        while len(tokenizer.encode(" ".join(words))) > length:
            words.pop()
        while len(tokenizer.encode(" ".join(words))) < length:
            words.append("a")  # one token in any vocabulary trained on captions
        assert len(tokenizer.encode(" ".join(words))) == length
        out.append(" ".join(words))
    return out


@pytest.fixture(scope="module")
def batches():
    """Batches of 1 and 7 captions (token counts: 75 + start + end = exactly 77 ids, and more
    than 77, truncated) and pixels."""
    return {1: [75], 7: [75, 200, 3, 20, 76, 40, 1]}


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("method", METHODS)
def test_onnxruntime_matches_torch(method, fp16, method_checkpoints, exported, batches):
    ckpt = load_checkpoint(method_checkpoints[method])
    encoders = OnnxEncoders(exported(method, fp16), fingerprint=ckpt.fingerprint)
    h, w = ckpt.image_size
    torch.manual_seed(1)
    for batch, lengths in batches.items():
        ids = ckpt.tokenizer(captions_of_length(ckpt.tokenizer, lengths))
        assert ids.shape == (batch, 77) and ids[0, 76] == ckpt.tokenizer.eot_id  # exactly full
        pixels = torch.randn(batch, 3, h, w)
        with torch.no_grad():
            want = {"text": ckpt.model.encode_text(torch.from_numpy(ids)), "image": ckpt.model.encode_image(pixels)}
        got = {"text": encoders.encode_text(ids), "image": encoders.encode_image(pixels.numpy())}
        for name in ("text", "image"):
            g = torch.from_numpy(got[name])
            assert g.dtype == torch.float32
            assert g.shape == want[name].shape == (batch, ckpt.model.set_size, encoders.manifest["embed_dim"])
            cosine = F.cosine_similarity(g, want[name], dim=-1)  # per set row
            if fp16:
                assert cosine.min() >= 0.999, (name, batch, cosine.min())
            else:
                assert (g - want[name]).abs().max() <= 1e-4, (name, batch)
                assert cosine.min() >= 0.99999, (name, batch)


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_graphs_are_checked_opset17_with_layernorm_ops(fp16, exported):
    folder = exported("esa", fp16)
    for name in ENCODERS:
        model = onnx.load(str(folder / f"{name}.onnx"))
        onnx.checker.check_model(model, full_check=True)
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        ops = Counter(n.op_type for n in model.graph.node)
        assert ops["LayerNormalization"] >= 7 and "ReduceMean" not in ops  # one op, not decomposed
        (inp,), (out,) = model.graph.input, model.graph.output
        types = {"input_ids": onnx.TensorProto.INT32, "pixels": onnx.TensorProto.FLOAT}
        assert inp.type.tensor_type.elem_type == types[inp.name]
        assert out.name == name.replace("_encoder", "_sets")
        assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
        assert dims == ["batch", 5, 128]
        dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
        assert dims == (["batch", "tokens"] if name == "text_encoder" else ["batch", 3, 64, 32])


def random_ids(rng, batch: int, context: int, eot: int, lengths=None) -> np.ndarray:
    """[batch, context] random captions (start, random ids, end, 0-padding) of random lengths."""
    ids = np.zeros((batch, context), np.int32)
    lengths = rng.integers(2, context + 1, batch) if lengths is None else lengths
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(1, eot - 1, length)
        ids[row, 0], ids[row, length - 1] = eot - 1, eot
    return ids


@pytest.mark.parametrize("method", METHODS)
def test_the_token_axis_is_dynamic_and_padding_changes_nothing(method, method_checkpoints, exported):
    """Captions padded to their batch's longest (or to any length up to the context) give, on ONNX
    Runtime, the sets the full 77-token input gives, row for row, and those are torch's."""
    ckpt = load_checkpoint(method_checkpoints[method])
    encoders = OnnxEncoders(exported(method), fingerprint=ckpt.fingerprint)
    session, eot = encoders.sessions["text_encoder"], ckpt.tokenizer.eot_id
    rng = np.random.default_rng(0)
    full = random_ids(rng, 12, 77, eot, lengths=[77, 2, 3, 9, 16, 17, 24, 30, 31, 45, 60, 76])
    want = session.run(None, {"input_ids": full})[0]
    with torch.no_grad():
        reference = ckpt.model.encode_text(torch.from_numpy(full)).numpy()
    assert np.abs(want - reference).max() <= 1e-4
    lengths = (full == eot).argmax(axis=1) + 1
    for tokens in (2, 9, 16, 17, 31, 64, 76, 77):
        rows = lengths <= tokens
        got = session.run(None, {"input_ids": np.ascontiguousarray(full[rows, :tokens])})[0]
        assert got.shape == (rows.sum(), *want.shape[1:])
        assert np.abs(got - want[rows]).max() <= 1e-5, (tokens, np.abs(got - want[rows]).max())
    # a row without an end token reads every position, at any length (the last one pools)
    for tokens in (5, 40, 77):
        ids = rng.integers(1, eot - 1, (2, tokens)).astype(np.int32)
        with torch.no_grad():
            reference = ckpt.model.encode_text(torch.from_numpy(ids)).numpy()
        assert np.abs(session.run(None, {"input_ids": ids})[0] - reference).max() <= 1e-4
    # the tokenizer's padding to the longest caption, through OnnxEncoders (which trims full rows too)
    texts = captions_of_length(ckpt.tokenizer, [3, 20, 11])
    short = ckpt.tokenizer(texts, longest=True)
    assert short.shape == (3, 22)
    assert np.abs(encoders.encode_text(short) - encoders.encode_text(ckpt.tokenizer(texts))).max() <= 1e-5
    assert np.abs(encoders.encode_text(short) - session.run(None, {"input_ids": ckpt.tokenizer(texts)})[0]).max() <= 1e-5


def test_fp16_graph_keeps_fp32_islands(exported):
    model = onnx.shape_inference.infer_shapes(onnx.load(str(exported("esa", True) / "text_encoder.onnx")))
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    half, single = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    for node in g.node:
        float_inputs = [types[i] for i in node.input if i and types.get(i) in (half, single)]
        if node.op_type in ("LayerNormalization", "Softmax", "ReduceL2"):
            assert float_inputs and set(float_inputs) == {single}, node.name
        if node.op_type in ("MatMul", "Einsum"):
            assert set(float_inputs) == {half}, node.name
    assert sum(t.data_type == half for t in g.initializer) > sum(t.data_type == single for t in g.initializer)


def test_manifest_describes_the_export(method_checkpoints, exported):
    ckpt = load_checkpoint(method_checkpoints["esa"])
    folder = exported("esa")
    m = load_manifest(folder, ckpt.fingerprint)
    assert (m["method"], m["set_size"], m["embed_dim"], m["precision"]) == ("esa", 5, 128, "fp32")
    assert m["scoring"] == {"alpha": ckpt.model.args["alpha"], "weight": ckpt.model.args["set_weight"]}
    assert m["image"] == ckpt.config["image"] and m["image"]["size"] == list(ckpt.image_size)
    assert m["tokenizer"]["context_length"] == 77 and m["tokenizer"]["eot_id"] == ckpt.tokenizer.eot_id
    assert (folder / m["tokenizer"]["file"]).read_bytes() == ckpt.tokenizer.merges_path.read_bytes()
    assert m["models"]["text_encoder"]["inputs"] == [{"name": "input_ids", "dtype": "int32", "shape": [-1, -1],
                                                      "max_shape": [-1, 77]}]
    assert m["version"] == 2
    assert m["models"]["image_encoder"]["outputs"][0]["name"] == "image_sets"
    base = load_manifest(exported("baseline"))
    assert base["scoring"]["weight"] == 0.0 and base["set_size"] == 1


def test_clear_errors(tmp_path, exported, method_checkpoints):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        export_onnx(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no manifest.json in"):
        load_manifest(tmp_path)
    with pytest.raises(ManifestError, match="exported from checkpoint .*, expected checkpoint 0123"):
        load_manifest(exported("esa"), fingerprint="0123")
    encoders = OnnxEncoders(exported("esa"))
    with pytest.raises(ValueError, match=r"input 'input_ids' must have shape \[B, <=77\], got \[2, 78\]"):
        encoders.encode_text(np.zeros((2, 78), np.int32))
