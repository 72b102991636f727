"""CLIP dual encoder: a ViT image tower and a causal text tower, described by JSON configs.

The module tree mirrors OpenAI CLIP's `model.py`, so `state_dict()` keys are exactly
OpenAI's (`visual.conv1.weight`, `transformer.resblocks.0.attn.in_proj_weight`, ...) and a
pretrained file loads by key with no renaming table. Differences from OpenAI, and why:
- Attention is written here (same parameters as nn.MultiheadAttention, computed with
  F.scaled_dot_product_attention) so the graph traces to ONNX as plain ops.
- Activations are batch-first [B, L, W]; the parameters do not depend on that.
- Both towers return every token, projected to the joint space: method heads that match
  parts of captions to parts of images need them (IRRA-style); the global feature is the
  CLS token (image) or the end-of-text token (text).
- The positional grid need not be square: person crops are 384x128 (24x8 patches), and
  `load_openai_clip` resizes the pretrained 14x14 grid to it.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CONFIG_DIR = Path(__file__).parent / "configs"
# Entries of OpenAI's TorchScript state dict that are hyper-parameters, not weights.
OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")


# ----------------------------------------------------------------------------- configuration

@dataclass
class VisionConfig:
    image_size: tuple[int, int]  # (H, W) in pixels
    patch_size: int
    width: int
    layers: int
    heads: int

    def __post_init__(self):
        size = self.image_size
        size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
        if len(size) != 2:
            raise ValueError(f"vision.image_size must be [H, W], got {self.image_size!r}")
        self.image_size = size
        if size[0] % self.patch_size or size[1] % self.patch_size:
            raise ValueError(f"vision.image_size {list(size)} is not a multiple of "
                             f"vision.patch_size {self.patch_size}")
        _check_heads("vision", self.width, self.heads)

    @property
    def grid(self) -> tuple[int, int]:
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size


@dataclass
class TextConfig:
    vocab_size: int
    width: int
    layers: int
    heads: int
    context_length: int = 77

    def __post_init__(self):
        _check_heads("text", self.width, self.heads)


@dataclass
class ClipConfig:
    embed_dim: int
    vision: VisionConfig
    text: TextConfig
    quick_gelu: bool = True  # OpenAI's weights were trained with QuickGELU

    @classmethod
    def from_dict(cls, d: Mapping) -> "ClipConfig":
        """From the JSON form (see trainer/configs/*.json); unknown or missing keys raise ValueError."""
        d = dict(_checked_keys(cls, d, "model config"))
        d["vision"] = VisionConfig(**_checked_keys(VisionConfig, d["vision"], "vision config"))
        d["text"] = TextConfig(**_checked_keys(TextConfig, d["text"], "text config"))
        return cls(**d)

    def to_dict(self) -> dict:
        """JSON-able; `ClipConfig.from_dict(c.to_dict()) == c`."""
        d = dataclasses.asdict(self)
        d["vision"]["image_size"] = list(self.vision.image_size)
        return d


def _check_heads(tower: str, width: int, heads: int) -> None:
    if heads < 1 or width % heads:
        raise ValueError(f"{tower}.width {width} is not divisible by {tower}.heads {heads}")


def _checked_keys(cls, d, where: str) -> Mapping:
    if not isinstance(d, Mapping):
        raise ValueError(f"{where} must be a JSON object, got {type(d).__name__}")
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"unknown {where} key(s) {unknown}; known: {known}")
    missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in d]
    if missing:
        raise ValueError(f"missing {where} key(s) {missing}")
    return d


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_config(name_or_path: str) -> ClipConfig:
    """A fresh ClipConfig from a name in trainer/configs/ ("tiny", "vit-b16-384x128") or a JSON file path."""
    path = Path(name_or_path)
    if path.suffix != ".json" and not path.is_file():
        if name_or_path not in available_configs():
            raise ValueError(f"unknown model config {name_or_path!r}; available: "
                             f"{', '.join(available_configs())} (or a path to a .json file)")
        path = CONFIG_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise FileNotFoundError(f"model config file not found: {path}")
    try:
        return ClipConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path}: {e}") from e


# ----------------------------------------------------------------------------- network

class QuickGELU(nn.Module):
    """OpenAI's sigmoid approximation of GELU; their weights expect it."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names (so OpenAI keys load),
    computed by F.scaled_dot_product_attention (fused kernels on GPU, plain ops in ONNX)."""

    def __init__(self, width: int, heads: int, causal: bool):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.scale = (width // heads) ** -0.5  # SDPA's default; a constant keeps shape arithmetic out of the ONNX graph
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))  # rows: [q; k; v]
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        # nn.MultiheadAttention's initialisation, which OpenAI's vision tower keeps.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor) -> Tensor:  # [B, L, W]
        # [B, L, 3W] -> [B, L, 3, H, W/H] -> [3, B, H, L, W/H]; the head split matches MultiheadAttention's.
        # unflatten/flatten keep B and L symbolic, so the batch stays dynamic in an ONNX trace.
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).unflatten(-1, (3, self.heads, -1))
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=self.scale)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, act_layer: type[nn.Module], causal: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, causal)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)),
            ("gelu", act_layer()),
            ("c_proj", nn.Linear(4 * width, width)),
        ]))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, act_layer: type[nn.Module], causal: bool):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, act_layer, causal)
                                         for _ in range(layers)])

    def forward(self, x: Tensor) -> Tensor:
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig, embed_dim: int, act_layer: type[nn.Module]):
        super().__init__()
        self.width, self.grid = cfg.width, cfg.grid
        # No bias: OpenAI's patch embedding has none, and ln_pre follows anyway.
        self.conv1 = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(cfg.width))
        self.positional_embedding = nn.Parameter(torch.empty(1 + self.grid[0] * self.grid[1], cfg.width))
        self.ln_pre = nn.LayerNorm(cfg.width)
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, act_layer, causal=False)
        self.ln_post = nn.LayerNorm(cfg.width)
        self.proj = nn.Parameter(torch.empty(cfg.width, embed_dim))

    def forward(self, pixels: Tensor) -> Tensor:
        """[B, 3, H, W] -> all tokens in the joint space [B, 1 + gh*gw, D], CLS first."""
        x = self.conv1(pixels.to(self.conv1.weight.dtype))  # [B, W, gh, gw]
        x = x.flatten(2).transpose(1, 2)  # [B, gh*gw, W], row-major over the grid (resize_pos_embed relies on it)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x) @ self.proj


class CLIP(nn.Module):
    def __init__(self, config: ClipConfig):
        super().__init__()
        self.config = copy.deepcopy(config)  # the model owns its description; later edits to `config` do not leak in
        act_layer = QuickGELU if config.quick_gelu else nn.GELU
        self.visual = VisionTransformer(config.vision, config.embed_dim, act_layer)
        t = config.text
        self.transformer = Transformer(t.width, t.layers, t.heads, act_layer, causal=True)
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width))
        self.ln_final = nn.LayerNorm(t.width)
        self.text_projection = nn.Parameter(torch.empty(t.width, config.embed_dim))
        # Kept for OpenAI key compatibility. Frozen: the retrieval losses use their own temperature, and DDP
        # refuses a trainable parameter that gets no gradient. requires_grad_(True) it for a CLIP-style loss.
        self.logit_scale = nn.Parameter(torch.empty([]), requires_grad=False)
        self.initialize_parameters()

    def initialize_parameters(self) -> None:
        """OpenAI CLIP's initialisation: the vision tower's as its constructor draws it (blocks keep
        the PyTorch defaults), the text tower's as `initialize_parameters` (depth-scaled residual branches)."""
        v = self.visual
        scale = v.width ** -0.5
        nn.init.normal_(v.class_embedding, std=scale)
        nn.init.normal_(v.positional_embedding, std=scale)
        nn.init.normal_(v.proj, std=scale)

        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        t = self.transformer
        proj_std = (t.width ** -0.5) * ((2 * t.layers) ** -0.5)
        attn_std = t.width ** -0.5
        fc_std = (2 * t.width) ** -0.5
        for block in t.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=t.width ** -0.5)
        nn.init.constant_(self.logit_scale, math.log(1 / 0.07))

    def encode_image(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """[B, 3, H, W] -> (global [B, D], tokens [B, 1+P, D]); global is the CLS token. Not normalised."""
        tokens = self.visual(pixels)
        return tokens[:, 0], tokens

    def encode_text(self, ids: Tensor, eot_id: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """[B, L] token ids (int32 or int64, L <= context_length) ->
        (global [B, D], tokens [B, L, D], mask [B, L] bool). Not normalised.

        The global feature is the token at the first end-of-text id (`eot_id`, by default the last
        vocabulary id as in OpenAI's BPE); the causal mask makes it independent of what follows.
        The mask is True up to and including that position. A row with no end-of-text uses its
        last position. Computed with tensor ops only (no Python branching on data) so it exports to ONNX.
        """
        eot = self.config.text.vocab_size - 1 if eot_id is None else eot_id
        length = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:length].to(self.token_embedding.weight.dtype)
        x = self.transformer(x)
        tokens = self.ln_final(x) @ self.text_projection

        is_eot = (ids == eot).to(torch.int32)
        first = is_eot.argmax(dim=-1)  # the first maximum: the first end-of-text, 0 if there is none
        pos = torch.where(is_eot.amax(dim=-1) > 0, first, torch.full_like(first, length - 1))
        mask = torch.arange(length, device=ids.device) <= pos[:, None]
        # gather + [:, 0] (not fancy indexing or squeeze): plain Gather nodes, no If, in the ONNX graph
        global_feat = tokens.gather(1, pos[:, None, None].expand(-1, 1, tokens.shape[-1]))[:, 0]
        return global_feat, tokens, mask


# ----------------------------------------------------------------------------- pretrained weights

class ClipWeightsError(ValueError):
    """A weights file that does not fit the model: the message names the file and every bad key."""


def resize_pos_embed(pos: Tensor, new_grid: tuple[int, int],
                     old_grid: tuple[int, int] | None = None) -> Tensor:
    """A ViT positional embedding [1 + gh*gw, W] resized to `new_grid` (rows, cols): the CLS row is kept,
    the grid is resampled bilinearly (align_corners=False). `old_grid` defaults to a square grid."""
    n = pos.shape[0] - 1
    if old_grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"a positional embedding of {n} grid positions is not square: pass old_grid")
        old_grid = (side, side)
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if old_grid[0] * old_grid[1] != n:
        raise ValueError(f"old_grid {old_grid} does not match the {n} grid positions of the embedding")
    if old_grid == new_grid:
        return pos
    grid = pos[1:].float().reshape(1, *old_grid, -1).permute(0, 3, 1, 2)  # [1, W, gh, gw]; fp32: fp16 bilinear is not everywhere
    grid = F.interpolate(grid, size=new_grid, mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(pos.dtype)
    return torch.cat([pos[:1], grid])


def _count_blocks(state_dict: Mapping[str, Tensor], prefix: str) -> int:
    # Highest index + 1, not the number of indices: a missing middle block is then reported as missing keys.
    idx = {int(k[len(prefix):].split(".")[0]) for k in state_dict if k.startswith(prefix)}
    return max(idx) + 1 if idx else 0


def _pretrained_grid(state_dict: Mapping[str, Tensor], image_size: tuple[int, int] | None,
                     source: str) -> tuple[int, int]:
    """The positional grid the weights were trained at: square (as OpenAI's), or the grid of
    `image_size` when that has the right number of positions (weights saved by this project)."""
    n = state_dict["visual.positional_embedding"].shape[0] - 1
    side = math.isqrt(n)
    if side * side == n:
        return side, side
    patch = state_dict["visual.conv1.weight"].shape[-1]
    if image_size is not None and (image_size[0] // patch) * (image_size[1] // patch) == n:
        return image_size[0] // patch, image_size[1] // patch
    raise ClipWeightsError(f"{source}: visual.positional_embedding has {n} grid positions, not a square "
                           f"grid; pass the image_size it was trained at")


def infer_config(state_dict: Mapping[str, Tensor], image_size: tuple[int, int] | None = None,
                 source: str = "state dict") -> ClipConfig:
    """The ClipConfig of OpenAI-format ViT weights, read from tensor shapes as OpenAI's `build_model` does
    (heads = width // 64). `image_size` (H, W) defaults to the pretrained grid times the patch size."""
    needed = ["visual.conv1.weight", "visual.positional_embedding", "text_projection",
              "ln_final.weight", "token_embedding.weight", "positional_embedding"]
    missing = [k for k in needed if k not in state_dict]
    if missing:
        raise ClipWeightsError(f"{source}: cannot infer a ViT CLIP architecture, missing key(s) {missing} "
                               f"(OpenAI key names expected; ResNet CLIP models are not supported)")
    conv = state_dict["visual.conv1.weight"]
    vision_width, patch = conv.shape[0], conv.shape[-1]
    if image_size is None:
        gh, gw = _pretrained_grid(state_dict, None, source)
        image_size = (gh * patch, gw * patch)
    text_width = state_dict["ln_final.weight"].shape[0]
    return ClipConfig(
        embed_dim=state_dict["text_projection"].shape[1],
        vision=VisionConfig(image_size=tuple(image_size), patch_size=patch, width=vision_width,
                            layers=_count_blocks(state_dict, "visual.transformer.resblocks."),
                            heads=max(1, vision_width // 64)),
        text=TextConfig(vocab_size=state_dict["token_embedding.weight"].shape[0], width=text_width,
                        layers=_count_blocks(state_dict, "transformer.resblocks."),
                        heads=max(1, text_width // 64),
                        context_length=state_dict["positional_embedding"].shape[0]),
        quick_gelu=True,
    )


def check_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Raise ClipWeightsError listing every missing, unexpected and mis-shaped key at once."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(getattr(v, "shape", ())) for k, v in state_dict.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshaped = [f"{k} expected {expected[k]} found {found[k]}"
                 for k in sorted(set(expected) & set(found)) if expected[k] != found[k]]
    if not (missing or unexpected or misshaped):
        return

    def listing(title: str, items: list[str], limit: int = 20) -> str:
        more = f", ... and {len(items) - limit} more" if len(items) > limit else ""
        return f"\n  {title} ({len(items)}): {', '.join(items[:limit])}{more}"

    raise ClipWeightsError(
        f"CLIP weights in {source} do not fit the model"
        + (listing("missing keys", missing) if missing else "")
        + (listing("unexpected keys", unexpected) if unexpected else "")
        + (listing("mis-shaped keys", misshaped) if misshaped else ""))


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a TorchScript archive (what OpenAI distributes) or of a plain state dict; never unpickles code."""
    torchscript = False
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:  # a TorchScript archive carries its code and constants; torch.save does not
            torchscript = any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())
    try:
        if torchscript:
            with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format OpenAI distributes
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=DeprecationWarning)
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ClipWeightsError(f"{path}: not readable as CLIP weights (a TorchScript archive or a plain "
                               f"state dict of tensors; pickled code is refused): {e}") from e
    if not isinstance(state, Mapping):
        raise ClipWeightsError(f"{path}: holds a {type(state).__name__}, not a state dict")
    state = {k: v for k, v in state.items() if k not in OPENAI_EXTRAS}
    odd = sorted(k for k, v in state.items() if not isinstance(v, Tensor))
    if odd:
        raise ClipWeightsError(f"{path}: entries that are not tensors: {odd}")
    # OpenAI ships fp16 weights; the model trains in fp32 (autocast supplies the half precision).
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def load_openai_clip(path: str | Path, image_size: tuple[int, int] | None = None) -> CLIP:
    """A CLIP built from an OpenAI weights file (TorchScript archive or plain state dict, OpenAI keys),
    its architecture inferred from the tensor shapes. With `image_size` (H, W) different from the
    pretrained one, the positional grid is resized (e.g. ViT-B/16: 14x14 -> 24x8 for 384x128)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP weights file not found: {path}")
    state = _read_state_dict(path)
    config = infer_config(state, image_size, source=str(path))
    model = CLIP(config)
    pos = state["visual.positional_embedding"]
    if pos.ndim == 2 and pos.shape[1] == config.vision.width:  # otherwise check_state_dict reports the shape
        old_grid = _pretrained_grid(state, config.vision.image_size, str(path))
        state["visual.positional_embedding"] = resize_pos_embed(pos, config.vision.grid, old_grid)
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True)
    return model
