"""SEN's text-guided image restoration (TIR), a training-only auxiliary task (Liu et al., 2023).

The image is turned to grayscale, 70 % of its patch tokens are dropped after the positional
embedding (CLS kept, as in MAE), and the CLIP image tower encodes the rest. A light decoder puts
learned mask tokens back in place, adds fixed 2-D sin-cos positions, lets every image token read
the caption's token features through one cross-attention, runs a few transformer layers and
predicts each patch's 16x16x3 *colour* pixels. The loss is the MSE over the masked patches only:
the grayscale input has no colour, so the text must supply it, which ties colour words to image
regions. Nothing here runs at inference: SEN retrieves with the global features alone.

`masked_image_tokens` repeats VisionTransformer.forward (trainer/model.py) with the drop inserted
after the positional embedding; that module has no hook for it.

`SEN` is the method: the baseline at inference (its set is the global feature), with TIR, a
hardest-negative triplet loss and caption pruning (trainer/data/pos_tagger.py) in training.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.data.transforms import CLIP_MEAN, CLIP_STD
from trainer.heads.base import Gather
from trainer.heads.baseline import Baseline
from trainer.losses import hardest_triplet_loss
from trainer.model import ClipConfig, ResidualAttentionBlock, VisionTransformer

if TYPE_CHECKING:
    from trainer.retriever import Retriever

GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # ITU-R BT.601 luma, as torchvision's rgb_to_grayscale


def grayscale(pixels: Tensor) -> Tensor:
    """CLIP-normalised RGB [B, 3, H, W] -> its grayscale (0.2989 R + 0.5870 G + 0.1140 B on the
    [0, 1] colours), repeated to 3 channels and CLIP-normalised again."""
    mean = pixels.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = pixels.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    rgb = pixels * std + mean
    gray = (rgb * pixels.new_tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return (gray.expand(-1, 3, -1, -1) - mean) / std


def patchify(pixels: Tensor, patch: int) -> Tensor:
    """[B, 3, H, W] -> [B, P, patch*patch*3], patches row-major over the grid (the order of the
    ViT's patch tokens), pixels within a patch as (row, col, channel)."""
    b, c, h, w = pixels.shape
    x = pixels.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def random_keep(batch: int, patches: int, mask_ratio: float, device: torch.device) -> Tensor:
    """Indices [B, n_keep] of the patches each image keeps: a uniformly random subset of
    int(P * (1 - mask_ratio)) (MAE's count, at least one), in ascending order."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    n_keep = max(1, int(patches * (1 - mask_ratio)))
    return torch.rand(batch, patches, device=device).argsort(dim=1)[:, :n_keep].sort(dim=1).values


def masked_image_tokens(visual: VisionTransformer, pixels: Tensor, keep: Tensor) -> Tensor:
    """The image tower on the kept patches only: [B, 1 + n_keep, D] (CLS first), joint space."""
    x = visual.conv1(pixels.to(visual.conv1.weight.dtype)).flatten(2).transpose(1, 2)  # [B, P, W]
    pos = visual.positional_embedding.to(x.dtype)
    x = (x + pos[1:]).gather(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # drop after the positions
    cls = (visual.class_embedding.to(x.dtype) + pos[0]).expand(x.shape[0], 1, -1)
    x = visual.transformer(visual.ln_pre(torch.cat([cls, x], dim=1)))
    return visual.ln_post(x) @ visual.proj


def sincos_2d(grid: tuple[int, int], dim: int) -> Tensor:
    """Fixed 2-D sin-cos positions [gh*gw, dim] (MAE): half the channels encode the row, half the column."""
    if dim % 4:
        raise ValueError(f"sin-cos positions need a width divisible by 4, got {dim}")
    freq = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid[0], dtype=torch.float64),
                                torch.arange(grid[1], dtype=torch.float64), indexing="ij")
    parts = []
    for coord in (rows.reshape(-1), cols.reshape(-1)):
        angle = coord[:, None] * freq[None]
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1).float()


class CrossAttention(nn.Module):
    """Image tokens (queries) read the caption's valid tokens (keys / values); pre-norm, residual."""

    def __init__(self, width: int, text_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_x, self.norm_t = nn.LayerNorm(width), nn.LayerNorm(text_dim)
        self.q, self.kv = nn.Linear(width, width), nn.Linear(text_dim, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        q = self.q(self.norm_x(x)).unflatten(-1, (self.heads, -1)).transpose(1, 2)       # [B, H, N, w]
        k, v = self.kv(self.norm_t(text)).unflatten(-1, (2, self.heads, -1)).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=text_mask[:, None, None, :])
        return x + self.out(attn.transpose(1, 2).flatten(2))


class RestorationDecoder(nn.Module):
    """Visible image tokens + caption tokens -> colour pixels of every patch [B, P, patch*patch*3]."""

    def __init__(self, embed_dim: int, grid: tuple[int, int], patch: int, width: int = 512,
                 layers: int = 4, heads: int = 8):
        super().__init__()
        self.embed = nn.Linear(embed_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(width))
        nn.init.normal_(self.mask_token, std=0.02)
        # CLS gets position zero, as in MAE; not a parameter, so the state dict holds only weights
        self.register_buffer("pos", torch.cat([torch.zeros(1, width), sincos_2d(grid, width)]), persistent=False)
        self.cross = CrossAttention(width, embed_dim, heads)
        self.blocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, nn.GELU, causal=False)
                                      for _ in range(layers)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, patch * patch * 3)

    def forward(self, visible: Tensor, keep: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        """visible [B, 1 + n_keep, D] (CLS first), keep [B, n_keep] patch indices,
        text [B, L, D] with text_mask [B, L] (True = a real token)."""
        x = self.embed(visible)
        b, patches = x.shape[0], self.pos.shape[0] - 1
        full = self.mask_token.to(x.dtype).expand(b, patches, -1).clone()
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x[:, 1:])
        x = torch.cat([x[:, :1], full], dim=1) + self.pos.to(x.dtype)
        x = self.blocks(self.cross(x, text, text_mask))
        return self.head(self.norm(x))[:, 1:]


def restoration_loss(pred: Tensor, target: Tensor, keep: Tensor) -> Tensor:
    """MSE between predicted and true patches [B, P, p*p*3], over the masked patches only."""
    masked = torch.ones(pred.shape[:2], dtype=torch.bool, device=pred.device)
    masked.scatter_(1, keep, False)
    per_patch = (pred.float() - target.float()).pow(2).mean(-1)
    return per_patch[masked].mean()


class SEN(Baseline):
    name = "sen"
    # restoration (TIR) on 70% masked grayscale patches, hardest-negative triplet, caption pruning
    defaults = dict(Baseline.defaults, mask_ratio=0.7, tir_weight=10.0, triplet_weight=10.0, triplet_margin=0.05,
                    prune_p=0.2, decoder_width=512, decoder_layers=4, decoder_heads=8)

    def build(self, model: Retriever, clip_config: ClipConfig, num_classes: int) -> None:
        super().build(model, clip_config, num_classes)
        a, v = self.args, clip_config.vision
        model.restorer = RestorationDecoder(clip_config.embed_dim, v.grid, v.patch_size, a["decoder_width"],
                                            a["decoder_layers"], a["decoder_heads"])

    @property
    def dataset_options(self) -> dict:
        return {"prune_p": self.args["prune_p"]}

    def losses(self, model: Retriever, pixels: Tensor, ids: Tensor, labels: Tensor, gather: Gather | None,
               other_ids: Tensor | None) -> dict[str, Tensor]:
        a = self.args
        image_feat, _ = model.clip.encode_image(pixels)
        text_feat, text_tokens, text_mask = self.text_features(model, ids)
        out, (image_feat, text_feat, labels) = self.global_losses(model, image_feat, text_feat, labels, gather)
        cos = F.normalize(text_feat.float(), dim=-1) @ F.normalize(image_feat.float(), dim=-1).t()
        out["triplet"] = a["triplet_weight"] * hardest_triplet_loss(cos, labels, a["triplet_margin"])
        out["tir"] = a["tir_weight"] * self.restoration_loss(model, pixels, text_tokens, text_mask)
        return out

    def restoration_loss(self, model: Retriever, pixels: Tensor, text_tokens: Tensor, text_mask: Tensor) -> Tensor:
        """TIR: restore the colour of masked patches of the grayscale image from the caption."""
        visual = model.clip.visual
        keep = random_keep(pixels.shape[0], visual.grid[0] * visual.grid[1], self.args["mask_ratio"], pixels.device)
        visible = masked_image_tokens(visual, grayscale(pixels), keep)
        pred = model.restorer(visible, keep, text_tokens, text_mask)
        return restoration_loss(pred, patchify(pixels, visual.conv1.kernel_size[0]), keep)
