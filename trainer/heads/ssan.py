"""SSAN: the semantically self-aligned network (Ding et al., 2021), as one dual encoder.

Image: ResNet-50 trunk (last stride 1: a 24x8 map at 384x128). Global = max-pool + a 1x1
projection C -> part_dim; six horizontal stripes, each max-pooled and projected by its own 1x1
projection. Text: word embeddings + one bidirectional LSTM whose hidden size is the trunk's C
(2048), the two directions averaged; global = max over words through the *same* projection as the
image; WAM gives each word a sigmoid score per part, and part p = max over words of (word x score_p)
through the same projection as stripe p. Sharing the projections is what aligns the parts.
Part relations (multi-view non-local, shared by both modalities): each part attends to the other
five (not itself), residual, then part_dim -> relation_dim.

How it meets this project's contracts (deviations from the paper, and why):
- One embedding set of one row. SSAN ranks by cos_global + cos_parts + cos_relations, a row-aligned
  sum that the set similarity (smooth Chamfer) cannot express. Every piece is L2-normalised and the
  pieces are concatenated as [g, p_1/sqrt(6) .. p_6/sqrt(6), r_1/sqrt(6) .. r_6/sqrt(6)] / sqrt(3),
  a unit vector whose dot product is exactly (cos_g + mean_p cos(p) + mean_p cos(r)) / 3: SSAN's
  score divided by 3 (the same ranking), cos_parts being the mean of the per-stripe cosines. So the
  set is [B, 1, part_dim * 7 + relation_dim * 6] and the plain global cosine of
  `set_similarity_reference(weight=0)` (and every kernel path) ranks SSAN exactly.
- Vocabulary: the paper builds a word vocabulary from the training captions. Here the LSTM reads the
  project's token ids (int32 [B, 77] from trainer.data.tokenizer.Tokenizer, the one tokenizer
  contract of export and serving); the trainer's default tokenizer is a BPE learned on the training
  captions, so frequent words are single tokens and rare ones split into pieces instead of <unk>.
  Start/end-of-text tokens are read as words; padding after end-of-text is not.
- The LSTM runs unpacked (packed sequences do not export to ONNX): the forward direction is causal,
  so padding after a caption cannot reach it; the backward direction runs as a second forward LSTM
  over each caption reversed within its own length, then is reversed back.
- Pixels arrive CLIP-normalised (the checkpoint's image contract for every method); they are
  re-normalised with ImageNet statistics inside, which a pretrained ResNet-50 expects.
- Projections are linear maps without BatchNorm (the shared projection sees both modalities, whose
  batch statistics differ).
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.data.transforms import CLIP_MEAN, CLIP_STD
from trainer.heads.base import Gather, Method, classifier
from trainer.losses import cr_loss, id_loss
from trainer.model import ClipConfig
from trainer.resnet import ResNet, load_torchvision_resnet

if TYPE_CHECKING:
    from trainer.retriever import Retriever

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def stripe_bounds(rows: int, parts: int) -> list[tuple[int, int]]:
    """Row ranges of `parts` horizontal stripes of a map with `rows` rows, as adaptive pooling
    cuts them: equal when rows divide, overlapping by a row when there are fewer rows than parts."""
    return [(p * rows // parts, -(-(p + 1) * rows // parts)) for p in range(parts)]


def valid_tokens(ids: Tensor, eot_id: int) -> Tensor:
    """[B, L] bool, True up to and including the first end-of-text (the whole row if it has none)."""
    is_eot = (ids == eot_id).to(torch.int32)
    length, first = ids.shape[1], is_eot.argmax(dim=-1)
    pos = torch.where(is_eot.amax(dim=-1) > 0, first, torch.full_like(first, length - 1))
    return torch.arange(length, device=ids.device) <= pos[:, None]


class PartRelation(nn.Module):
    """Multi-view non-local block: every part attends to the other parts, residual, then a projection."""

    def __init__(self, dim: int, out_dim: int, parts: int):
        super().__init__()
        inner = dim // 2
        self.scale = inner ** -0.5
        self.q, self.k, self.v = nn.Linear(dim, inner), nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.o, self.out = nn.Linear(inner, dim), nn.Linear(dim, out_dim)
        self.register_buffer("self_mask", torch.eye(parts, dtype=torch.bool), persistent=False)

    def forward(self, parts: Tensor) -> Tensor:  # [B, P, dim] -> [B, P, out_dim]
        logits = (self.q(parts) @ self.k(parts).transpose(1, 2)) * self.scale
        attn = logits.masked_fill(self.self_mask, float("-inf")).softmax(dim=-1)
        return self.out(parts + self.o(attn @ self.v(parts)))


class SSANEncoder(nn.Module):
    """Both SSAN towers. `config` is the checkpoint's model description: image size, vocabulary and
    context length come from it, and its embed_dim is set to the width of the concatenated set."""

    def __init__(self, clip_config: ClipConfig, args: dict, eot_id: int):
        super().__init__()
        self.parts, self.eot_id = args["parts"], eot_id
        self.part_dim, self.relation_dim = args["part_dim"], args["relation_dim"]
        self.config = copy.deepcopy(clip_config)
        self.config.embed_dim = self.part_dim * (1 + self.parts) + self.relation_dim * self.parts
        self.resnet = ResNet(tuple(args["resnet_layers"]), args["resnet_width"])
        channels = self.resnet.channels
        rows = self.resnet.feature_rows(self.config.vision.image_size[0])
        self.stripes = stripe_bounds(rows, self.parts)
        self.word_embedding = nn.Embedding(self.config.text.vocab_size, args["word_dim"])
        self.lstm_forward = nn.LSTM(args["word_dim"], channels, batch_first=True)
        self.lstm_backward = nn.LSTM(args["word_dim"], channels, batch_first=True)
        self.word_attention = nn.Linear(channels, self.parts, bias=False)  # WAM
        self.global_proj = nn.Linear(channels, self.part_dim, bias=False)
        self.part_proj = nn.ModuleList(nn.Linear(channels, self.part_dim, bias=False) for _ in range(self.parts))
        self.relation = PartRelation(self.part_dim, self.relation_dim, self.parts)
        # CLIP-normalised pixels -> ImageNet-normalised: x * scale + shift per channel
        clip_mean, clip_std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
        in_mean, in_std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("pixel_scale", (clip_std / in_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_shift", ((clip_mean - in_mean) / in_std).view(1, 3, 1, 1), persistent=False)

    def _relate(self, global_in: Tensor, part_in: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        parts = torch.stack([proj(x) for proj, x in zip(self.part_proj, part_in)], dim=1)
        return self.global_proj(global_in), parts, self.relation(parts)

    def encode_image(self, pixels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[B, 3, H, W] (CLIP-normalised) -> global [B, part_dim], parts [B, 6, part_dim],
        relations [B, 6, relation_dim]; not normalised."""
        x = self.resnet(pixels * self.pixel_scale + self.pixel_shift)
        return self._relate(x.amax(dim=(2, 3)), [x[:, :, s:e].amax(dim=(2, 3)) for s, e in self.stripes])

    def word_features(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Token ids [B, L] -> BiLSTM word features [B, L, C] (directions averaged), valid mask [B, L]."""
        mask = valid_tokens(ids, self.eot_id)
        x = self.word_embedding(ids)
        # time index that reverses each row within its valid length (padding stays in place)
        length = mask.sum(dim=1, keepdim=True)
        t = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        rev = torch.where(t < length, length - 1 - t, t).unsqueeze(-1)
        forward = self.lstm_forward(x)[0]
        backward = self.lstm_backward(x.gather(1, rev.expand(-1, -1, x.shape[-1])))[0]
        backward = backward.gather(1, rev.expand(-1, -1, backward.shape[-1]))
        return (forward + backward) / 2, mask

    def encode_text(self, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Token ids int32 [B, L] -> global, parts, relations as `encode_image`."""
        words, mask = self.word_features(ids)
        invalid = ~mask.unsqueeze(-1)
        scores = torch.sigmoid(self.word_attention(words))  # [B, L, parts]
        parts = [(words * scores[..., p:p + 1]).masked_fill(invalid, float("-inf")).amax(dim=1)
                 for p in range(self.parts)]
        return self._relate(words.masked_fill(invalid, float("-inf")).amax(dim=1), parts)


def ssan_set(global_feat: Tensor, parts: Tensor, relations: Tensor) -> Tensor:
    """The one-row embedding set [B, 1, D] whose dot products are SSAN's score / 3 (module docstring)."""
    # normalising the row of n unit pieces divides it by sqrt(n), with no shape arithmetic in the ONNX trace
    pieces = [F.normalize(x.flatten(1), dim=-1) for x in
              (global_feat, F.normalize(parts, dim=-1), F.normalize(relations, dim=-1))]
    return F.normalize(torch.cat(pieces, dim=1), dim=-1).unsqueeze(1)


def branch_similarities(a: tuple[Tensor, Tensor, Tensor], b: tuple[Tensor, Tensor, Tensor]) -> list[Tensor]:
    """Cosine similarities [B_a, B_b] of the global, part and relation branches (parts: mean over
    the per-part cosines), the three terms of SSAN's score."""
    sims = [F.normalize(a[0], dim=-1) @ F.normalize(b[0], dim=-1).T]
    for x, y in zip(a[1:], b[1:]):
        sims.append(torch.einsum("ipd,jpd->ij", F.normalize(x, dim=-1), F.normalize(y, dim=-1)) / x.shape[1])
    return sims


class SSAN(Method):
    """The dual encoder sits under the Retriever's attribute `clip`, with a `.config` as CLIP's (image
    size, vocabulary, set width), so checkpoints, evaluation and export read it as any other method's."""
    name = "ssan"
    # its own towers (ResNet-50 trunk, BiLSTM text); CR loss margin and other-caption weight
    defaults = dict(id_weight=1.0, parts=6, resnet_layers=[3, 4, 6, 3], resnet_width=64, word_dim=512,
                    part_dim=1024, relation_dim=512, margin=0.2, other_weight=0.1)
    pretrained_prefix = "clip.resnet."  # ImageNet weights exist for the trunk only

    def build(self, model: Retriever, clip_config: ClipConfig, num_classes: int) -> None:
        a = self.args
        model.clip = SSANEncoder(clip_config, a, model.eot_id)
        # ID losses per part, each classifier shared by both modalities (the global one is `classifier`)
        model.part_classifiers = nn.ModuleList(classifier(a["part_dim"], num_classes) for _ in range(a["parts"]))
        model.classifier = classifier(a["part_dim"], num_classes)

    def pretrained(self, path: str, config: ClipConfig) -> tuple[ClipConfig, Callable[[Retriever], None]]:
        return config, lambda model: load_torchvision_resnet(model.clip.resnet, path)

    @property
    def dataset_options(self) -> dict:
        return {"other_caption": True}  # the CR loss's caption of another image of the same person

    def encode_text(self, model: Retriever, ids: Tensor) -> Tensor:
        return ssan_set(*model.clip.encode_text(ids))

    def encode_image(self, model: Retriever, pixels: Tensor) -> Tensor:
        return ssan_set(*model.clip.encode_image(pixels))

    def losses(self, model: Retriever, pixels: Tensor, ids: Tensor, labels: Tensor, gather: Gather | None,
               other_ids: Tensor | None) -> dict[str, Tensor]:
        """ID losses on the global feature and every part; CR loss on the three branches of the score."""
        if other_ids is None:
            raise ValueError("SSAN's CR loss needs other_ids: a caption of another image of the same "
                             "person per sample (CaptionDataset(..., other_caption=True))")
        a, enc = self.args, model.clip
        image, text, other = enc.encode_image(pixels), enc.encode_text(ids), enc.encode_text(other_ids)
        classifiers = [model.classifier, *model.part_classifiers]
        pieces = [(image[0], text[0])] + list(zip(image[1].unbind(1), text[1].unbind(1)))
        out = {"id": a["id_weight"] * sum(id_loss(c(v.float()), c(t.float()), labels)
                                          for c, (v, t) in zip(classifiers, pieces)) / len(classifiers)}
        if gather is not None:
            image, text, other = (tuple(gather(x) for x in feats) for feats in (image, text, other))
            labels = gather(labels)
        image, text, other = (tuple(x.float() for x in feats) for feats in (image, text, other))
        out["cr"] = sum(cr_loss(s, s_other, labels, a["margin"], a["other_weight"])
                        for s, s_other in zip(branch_similarities(image, text), branch_similarities(image, other)))
        return out
