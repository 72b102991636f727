"""The CLIP dual encoder: configs, shapes, the end-of-text contract, OpenAI weight loading, ONNX export."""
import dataclasses
import json
import warnings

import pytest
import torch
from torch import nn

from trainer.model import (CLIP, Attention, ClipConfig, ClipWeightsError, TextConfig, VisionConfig,
                           check_state_dict, infer_config, load_config, load_openai_clip,
                           resize_pos_embed)

BLOCK = ["ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
         "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
         "mlp.c_proj.weight", "mlp.c_proj.bias"]


def openai_shapes(embed, image, patch, vw, vl, tw, tl, vocab, ctx):
    """OpenAI CLIP's state-dict shapes for a ViT model, written out independently of trainer.model."""
    def block(prefix, w):
        return {f"{prefix}.{k}": s for k, s in zip(BLOCK, [
            (w,), (w,), (3 * w, w), (3 * w,), (w, w), (w,), (w,), (w,), (4 * w, w), (4 * w,), (w, 4 * w), (w,)])}
    grid = (image[0] // patch) * (image[1] // patch)
    shapes = {"visual.conv1.weight": (vw, 3, patch, patch), "visual.class_embedding": (vw,),
              "visual.positional_embedding": (1 + grid, vw), "visual.ln_pre.weight": (vw,),
              "visual.ln_pre.bias": (vw,), "visual.ln_post.weight": (vw,), "visual.ln_post.bias": (vw,),
              "visual.proj": (vw, embed), "token_embedding.weight": (vocab, tw), "positional_embedding": (ctx, tw),
              "ln_final.weight": (tw,), "ln_final.bias": (tw,), "text_projection": (tw, embed), "logit_scale": ()}
    for i in range(vl):
        shapes.update(block(f"visual.transformer.resblocks.{i}", vw))
    for i in range(tl):
        shapes.update(block(f"transformer.resblocks.{i}", tw))
    return shapes


def small_config(image=(32, 32), patch=8, width=64, layers=2, vocab=100, ctx=16, embed=32) -> ClipConfig:
    """heads = width // 64, as infer_config reads OpenAI weights."""
    return ClipConfig(embed_dim=embed,
                      vision=VisionConfig(image_size=image, patch_size=patch, width=width, layers=layers,
                                          heads=max(1, width // 64)),
                      text=TextConfig(vocab_size=vocab, width=width, layers=layers, heads=max(1, width // 64),
                                      context_length=ctx))


def random_ids(batch, length, vocab, eot_at, generator=None, dtype=torch.int64):
    ids = torch.randint(1, vocab - 1, (batch, length), generator=generator)
    for row, pos in enumerate(eot_at):
        ids[row, pos] = vocab - 1
    return ids.to(dtype)


# ----------------------------------------------------------------------------- configs

@pytest.mark.parametrize("name", ["tiny", "vit-b16-384x128"])
def test_config_round_trips_through_json(name):
    config = load_config(name)
    assert ClipConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert isinstance(config.vision.image_size, tuple)
    config.text.vocab_size = 7  # load_config hands out a fresh object each time
    assert load_config(name).text.vocab_size == 49408


def test_tiny_config_values():
    c = load_config("tiny")
    assert (c.vision.image_size, c.vision.patch_size, c.vision.grid) == ((64, 32), 8, (8, 4))
    assert (c.vision.width, c.vision.layers, c.vision.heads) == (128, 3, 4)
    assert (c.text.width, c.text.layers, c.text.heads, c.text.context_length, c.text.vocab_size) == \
        (128, 3, 4, 77, 49408)
    assert c.embed_dim == 128 and c.quick_gelu


def test_config_unknown_and_missing_keys_are_named(tmp_path):
    d = load_config("tiny").to_dict()
    with pytest.raises(ValueError, match=r"unknown model config key\(s\) \['dropout'\]"):
        ClipConfig.from_dict({**d, "dropout": 0.1})
    with pytest.raises(ValueError, match=r"unknown vision config key\(s\) \['patch', 'size'\]"):
        ClipConfig.from_dict({**d, "vision": {**d["vision"], "size": 1, "patch": 2}})
    with pytest.raises(ValueError, match=r"unknown text config key\(s\) \['ctx'\]"):
        ClipConfig.from_dict({**d, "text": {**d["text"], "ctx": 77}})
    with pytest.raises(ValueError, match=r"missing text config key\(s\) \['width'\]"):
        ClipConfig.from_dict({**d, "text": {k: v for k, v in d["text"].items() if k != "width"}})
    with pytest.raises(ValueError, match="not a multiple of vision.patch_size"):
        ClipConfig.from_dict({**d, "vision": {**d["vision"], "image_size": [60, 32]}})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**d, "typo": 1}))
    with pytest.raises(ValueError, match=r"bad\.json.*typo"):
        load_config(str(bad))


def test_load_config_from_path_and_unknown_name(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(load_config("tiny").to_dict()))
    assert load_config(str(path)) == load_config("tiny")
    with pytest.raises(ValueError, match="unknown model config 'vit-h14'.*tiny.*vit-b16-384x128"):
        load_config("vit-h14")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_config(str(tmp_path / "nope.json"))


# ----------------------------------------------------------------------------- architecture

def test_vit_b16_config_has_exactly_openai_shapes():
    config = load_config("vit-b16-384x128")
    with torch.device("meta"):  # 150M parameters: shapes only, no memory
        model = CLIP(config)
    found = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert found == openai_shapes(512, (384, 128), 16, 768, 12, 512, 12, 49408, 77)
    assert config.vision.grid == (24, 8) and config.vision.heads == 12 and config.text.heads == 8
    # OpenAI ViT-B/16 has 149,620,737 parameters; the 24x8 grid has 4 positions fewer than 14x14.
    assert sum(p.numel() for p in model.parameters()) == 149_620_737 - 4 * 768
    assert infer_config(model.state_dict(), image_size=(384, 128)) == config


def test_tiny_state_dict_keys_are_openai():
    c = load_config("tiny")
    found = {k: tuple(v.shape) for k, v in CLIP(c).state_dict().items()}
    assert found == openai_shapes(128, (64, 32), 8, 128, 3, 128, 3, 49408, 77)


def shrunken_vit_b16() -> ClipConfig:
    c = load_config("vit-b16-384x128")  # keeps 384x128 / patch 16 / 24x8 grid and the text context
    return dataclasses.replace(c, embed_dim=32,
                               vision=dataclasses.replace(c.vision, width=64, layers=1, heads=2),
                               text=dataclasses.replace(c.text, width=64, layers=1, heads=2, vocab_size=500))


@pytest.mark.parametrize("make_config", [lambda: load_config("tiny"), shrunken_vit_b16], ids=["tiny", "vit-b16-small"])
def test_encoder_shapes(make_config):
    torch.manual_seed(0)
    c = make_config()
    model = CLIP(c).eval()
    h, w = c.vision.image_size
    grid = (h // c.vision.patch_size) * (w // c.vision.patch_size)
    with torch.no_grad():
        image_global, image_tokens = model.encode_image(torch.randn(2, 3, h, w))
        ids = random_ids(2, c.text.context_length, c.text.vocab_size, eot_at=[5, 76])
        text_global, text_tokens, mask = model.encode_text(ids)
    assert image_global.shape == (2, c.embed_dim) and image_tokens.shape == (2, 1 + grid, c.embed_dim)
    assert torch.equal(image_global, image_tokens[:, 0])
    assert text_global.shape == (2, c.embed_dim) and text_tokens.shape == (2, 77, c.embed_dim)
    assert mask.dtype == torch.bool and mask.sum(1).tolist() == [6, 77]
    assert model.config == c


def test_every_trainable_parameter_gets_a_gradient():
    """DDP refuses trainable parameters that get no gradient: logit_scale (unused by the retrieval
    losses) is frozen, everything else is reached by encode_image / encode_text."""
    torch.manual_seed(0)
    model = CLIP(small_config(vocab=50, ctx=12))
    g_img, t_img = model.encode_image(torch.randn(2, 3, 32, 32))
    g_txt, t_txt, _ = model.encode_text(random_ids(2, 12, 50, eot_at=[3, 11]))
    (g_img.sum() + g_txt.sum() + t_img.sum() + t_txt.sum()).backward()
    assert not model.logit_scale.requires_grad and "logit_scale" in model.state_dict()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision runs
        assert model.encode_text(random_ids(1, 12, 50, eot_at=[5]))[0].dtype == torch.bfloat16


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_nn_multihead_attention(causal):
    torch.manual_seed(0)
    ours, ref = Attention(32, 4, causal), nn.MultiheadAttention(32, 4)
    ref.load_state_dict(ours.state_dict())  # same parameter names and layout
    x = torch.randn(3, 7, 32)
    mask = nn.Transformer.generate_square_subsequent_mask(7) if causal else None
    expected = ref(x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), attn_mask=mask,
                   need_weights=False)[0].transpose(0, 1)  # OpenAI runs it sequence-first
    torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)


def test_text_global_is_taken_at_end_of_text():
    torch.manual_seed(0)
    c = small_config(vocab=50, ctx=12)
    model = CLIP(c).eval()
    g = torch.Generator().manual_seed(1)
    ids = random_ids(3, 12, 50, eot_at=[4, 8, 11], generator=g)
    with torch.no_grad():
        base, tokens, mask = model.encode_text(ids)
        assert torch.equal(base, tokens[torch.arange(3), torch.tensor([4, 8, 11])])
        assert mask.tolist() == [[j <= p for j in range(12)] for p in (4, 8, 11)]

        after = ids.clone()
        after[0, 5:] = 7
        after[1, 9:] = 3  # padding after the end-of-text cannot reach it through the causal mask
        g_after, t_after, _ = model.encode_text(after)
        torch.testing.assert_close(g_after, base, atol=1e-5, rtol=0)
        torch.testing.assert_close(t_after[0, :5], tokens[0, :5], atol=1e-5, rtol=0)

        before = ids.clone()
        before[:, 2] = (ids[:, 2] + 1) % 48 + 1
        assert not torch.allclose(model.encode_text(before)[0], base, atol=1e-4)

        g32, t32, m32 = model.encode_text(ids.to(torch.int32))
        assert torch.equal(g32, base) and torch.equal(t32, tokens) and torch.equal(m32, mask)

        # an explicit eot id; the first of several; none at all -> the last position
        other = ids.clone()
        other[:, 3] = 9
        other[0, 6] = 9
        g_other, t_other, m_other = model.encode_text(other, eot_id=9)
        assert torch.equal(g_other, t_other[:, 3]) and m_other.sum(1).tolist() == [4, 4, 4]
        none = torch.full((1, 12), 5)
        g_none, t_none, m_none = model.encode_text(none)
        assert torch.equal(g_none, t_none[:, -1]) and bool(m_none.all())

        shorter = model.encode_text(ids[:, :9])  # L < context_length
        torch.testing.assert_close(shorter[0][:2], base[:2], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- positional grid

def test_resize_pos_embed():
    torch.manual_seed(0)
    pos = torch.randn(1 + 14 * 14, 16)
    out = resize_pos_embed(pos, (24, 8))
    assert out.shape == (1 + 24 * 8, 16)
    assert torch.equal(out[0], pos[0])  # CLS row kept
    assert torch.equal(resize_pos_embed(pos, (14, 14)), pos)
    assert torch.equal(resize_pos_embed(pos, (14, 14), old_grid=(14, 14)), pos)

    const = torch.cat([torch.zeros(1, 4), torch.full((14 * 14, 4), 0.25)])
    torch.testing.assert_close(resize_pos_embed(const, (24, 8)), torch.cat([torch.zeros(1, 4),
                                                                           torch.full((192, 4), 0.25)]))
    # each grid row resized on its own: a grid constant along columns stays so, rows keep their order
    rows = torch.arange(14.0)[:, None, None].expand(14, 14, 3).reshape(196, 3)
    out = resize_pos_embed(torch.cat([torch.zeros(1, 3), rows]), (24, 8))[1:].reshape(24, 8, 3)
    torch.testing.assert_close(out, out[:, :1].expand(24, 8, 3))
    assert bool((out[1:, 0] >= out[:-1, 0]).all())
    # a non-square grid round-trips its shape, and fp16 stays fp16
    back = resize_pos_embed(out.new_zeros(1 + 192, 3).half(), (14, 14), old_grid=(24, 8))
    assert back.shape == (197, 3) and back.dtype == torch.float16
    with pytest.raises(ValueError, match="not square"):
        resize_pos_embed(torch.zeros(1 + 24 * 8, 3), (14, 14))


# ----------------------------------------------------------------------------- OpenAI weights

class _TorchScriptWeights(nn.Module):
    """Carries tensors under OpenAI's dotted names, like the archive OpenAI distributes."""

    def __init__(self, state: dict, extras: dict):
        super().__init__()
        for key, value in state.items():
            *parents, leaf = key.split(".")
            module = self
            for part in parents:
                if part not in module._modules:
                    module.add_module(part, nn.Module())
                module = module._modules[part]
            module.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
        for key, value in extras.items():  # OpenAI's archive keeps these hyper-parameters in its state dict
            self.register_buffer(key, torch.tensor(value))

    def forward(self) -> torch.Tensor:
        return self.logit_scale


def write_weights(model: CLIP, path, torchscript: bool, half: bool = False) -> dict:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if half:  # OpenAI ships fp16 tensors
        state = {k: v.half() for k, v in state.items()}
    c = model.config
    extras = {"input_resolution": c.vision.image_size[0], "context_length": c.text.context_length,
              "vocab_size": c.text.vocab_size}
    if torchscript:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.* is deprecated; OpenAI's files use it
            torch.jit.save(torch.jit.script(_TorchScriptWeights(state, extras)), str(path))
            assert set(torch.jit.load(str(path)).state_dict()) == set(state) | set(extras)
    else:
        torch.save({**state, **extras}, path)
    return state


@pytest.mark.parametrize("torchscript", [False, True], ids=["state-dict", "torchscript"])
def test_load_openai_clip_round_trip(tmp_path, torchscript):
    torch.manual_seed(0)
    source = CLIP(small_config(image=(32, 32), patch=8, width=64, layers=2)).eval()  # a square 4x4 grid
    path = tmp_path / ("ViT.pt" if not torchscript else "ViT-jit.pt")
    saved = write_weights(source, path, torchscript, half=torchscript)
    saved = {k: v.float() for k, v in saved.items()}

    same = load_openai_clip(path)
    assert same.config == source.config
    for k, v in same.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, saved[k]), k
    pixels = torch.randn(2, 3, 32, 32)
    ids = random_ids(2, 16, 100, eot_at=[3, 15])
    with torch.no_grad():
        if not torchscript:  # exact weights: exact outputs
            for got, want in zip(same.encode_image(pixels) + same.encode_text(ids),
                                 source.encode_image(pixels) + source.encode_text(ids)):
                assert torch.equal(got, want)

    tall = load_openai_clip(path, image_size=(48, 16))  # 4x4 -> 6x2
    assert tall.config == dataclasses.replace(
        source.config, vision=dataclasses.replace(source.config.vision, image_size=(48, 16)))
    for k, v in tall.state_dict().items():
        if k == "visual.positional_embedding":
            assert torch.equal(v, resize_pos_embed(saved[k], (6, 2), (4, 4)))
        else:
            assert torch.equal(v, saved[k]), k
    with torch.no_grad():
        g, tokens = tall.encode_image(torch.randn(1, 3, 48, 16))
    assert tokens.shape == (1, 1 + 12, 32)


def test_infer_config_reads_openai_conventions():
    with torch.device("meta"):
        state = CLIP(small_config(image=(32, 32), patch=8, width=128, layers=3, vocab=77, ctx=20,
                                  embed=48)).state_dict()
    c = infer_config(state)
    assert c.vision.image_size == (32, 32) and c.vision.patch_size == 8 and c.vision.layers == 3
    assert c.vision.heads == c.text.heads == 2  # width // 64
    assert (c.text.vocab_size, c.text.context_length, c.text.width, c.embed_dim) == (77, 20, 128, 48)
    with pytest.raises(ClipWeightsError, match="visual.conv1.weight"):
        infer_config({k: v for k, v in state.items() if k != "visual.conv1.weight"}, source="x.pt")


def test_weights_that_do_not_fit_are_all_named(tmp_path):
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in CLIP(small_config()).state_dict().items()}
    del state["visual.ln_post.bias"]
    state["visual.extra_head.weight"] = torch.zeros(3)
    state["visual.ln_pre.weight"] = torch.ones(65)
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(ClipWeightsError) as info:
        load_openai_clip(path)
    message = str(info.value)
    assert "broken.pt" in message and "visual.ln_post.bias" in message
    assert "visual.extra_head.weight" in message
    assert "visual.ln_pre.weight expected (64,) found (65,)" in message
    assert isinstance(info.value, ValueError)

    model = CLIP(small_config())
    check_state_dict(model, model.state_dict(), "itself")  # a fitting state dict passes


def test_unreadable_and_missing_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-ViT.pt"):
        load_openai_clip(tmp_path / "no-such-ViT.pt")
    path = tmp_path / "code.pt"
    torch.save({"weights": nn.Linear(2, 2)}, path)  # a pickled module: refused, not unpickled
    with pytest.raises(ClipWeightsError, match="code.pt"):
        load_openai_clip(path)


# ----------------------------------------------------------------------------- ONNX

class _Towers(nn.Module):
    def __init__(self, clip: CLIP, eot_id: int):
        super().__init__()
        self.clip, self.eot_id = clip, eot_id

    def forward(self, pixels, ids):
        image_global, image_tokens = self.clip.encode_image(pixels)
        text_global, text_tokens, mask = self.clip.encode_text(ids, eot_id=self.eot_id)
        return image_global, image_tokens, text_global, text_tokens, mask


def test_onnx_export_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    c = load_config("tiny")
    c.text.vocab_size = 600  # the demo's small trained BPE; keeps the file small
    towers = _Towers(CLIP(c).eval(), eot_id=599).eval()
    h, w = c.vision.image_size
    path = tmp_path / "towers.onnx"
    names = ["image_global", "image_tokens", "text_global", "text_tokens", "text_mask"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(towers, (torch.randn(2, 3, h, w), random_ids(2, 77, 600, [9, 30], dtype=torch.int32)),
                          str(path), dynamo=False, opset_version=17, input_names=["pixels", "ids"],
                          output_names=names,
                          dynamic_axes={n: {0: "batch"} for n in ["pixels", "ids", *names]})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.type for i in session.get_inputs()] == ["tensor(float)", "tensor(int32)"]
    for batch in (1, 3):
        pixels = torch.randn(batch, 3, h, w)
        ids = random_ids(batch, 77, 600, [4, 76, 20][:batch], dtype=torch.int32)
        if batch == 3:
            ids[2, 40] = 599  # a second end-of-text: the first one counts
        got = session.run(names, {"pixels": pixels.numpy(), "ids": ids.numpy()})
        with torch.no_grad():
            want = towers(pixels, ids)
        for name, g, wt in zip(names, got, want):
            assert g.shape == tuple(wt.shape), name
            torch.testing.assert_close(torch.from_numpy(g), wt, atol=1e-4, rtol=1e-4, msg=name)
