"""The trained model: CLIP towers plus a method's heads, behind one encoding contract.

Every stage (evaluation, export, serving) encodes through `encode_text` / `encode_image`,
which return embedding sets `[B, K+1, D]`: L2-normalised rows, row 0 the global feature.
The baseline has no set head, so K = 0; ESA adds a slot head per modality (K slots) and
ranks with smooth-Chamfer set similarity (kernels/set_similarity.py). SEN is the baseline at
inference; its restoration decoder and triplet loss act in training only. SSAN replaces the CLIP
towers by its own dual encoder (ResNet-50 + BiLSTM, trainer/heads/ssan.py), kept under the same
attribute `clip` with the same `.config` (image size, vocabulary, set width), so checkpoints and
evaluation need no method-specific code; its set is one row whose cosine is SSAN's score / 3.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels import set_scores
from kernels.scores_autograd import set_scores_with_grad
from kernels.set_similarity import set_similarity_reference, slot_chamfer
from trainer.heads.esa import SlotSetHead
from trainer.heads.sen import (RestorationDecoder, grayscale, masked_image_tokens, patchify,
                               random_keep, restoration_loss)
from trainer.heads.ssan import SSANEncoder, branch_similarities, ssan_set
from trainer.losses import (asm_loss, cr_loss, hardest_triplet_loss, id_loss, sdm_from_scores, sdm_loss,
                            semantic_margins, slot_diversity)
from trainer.model import CLIP, ClipConfig

_GLOBAL = {"temperature": 0.02, "id_weight": 1.0}  # SDM temperature and ID weight (IRRA)
DEFAULT_METHOD_ARGS = {
    "baseline": dict(_GLOBAL),
    # slots/iterations: the set head; alpha/set_weight: the ranking score; m0/m1/tau: ASM.
    # asm_weight 10: at 1 the ASM term was ~0.5 against SDM's ~17 and barely shaped the sets;
    # 10 beat 1 at R@5/R@10/mAP on the same 3 seeds (esa_vs_baseline_asm1.json, an earlier code version)
    # slot_sdm_weight 1: SDM on the slots alone. Without it the slots collapsed to the same vectors
    # for every item and ranked at chance, so ESA was its global row (benchmarks/bench_set_terms.py);
    # with it they carry the person (R@1 15 alone) and ESA gained 1.1 R@1 and 1.3 mAP, paired over
    # 5 seeds (benchmarks/results/esa_vs_baseline.json against esa_vs_baseline_noslotsdm.json)
    "esa": dict(_GLOBAL, slots=4, iterations=3, alpha=16.0, set_weight=1.0, m0=0.05, m1=0.25,
                tau=0.05, asm_weight=10.0, diversity_weight=0.1, slot_sdm_weight=1.0),
    # SEN: restoration (TIR) on 70% masked grayscale patches, hardest-negative triplet, caption pruning.
    "sen": dict(_GLOBAL, mask_ratio=0.7, tir_weight=10.0, triplet_weight=10.0, triplet_margin=0.05,
                prune_p=0.2, decoder_width=512, decoder_layers=4, decoder_heads=8),
    # SSAN: its own towers (ResNet-50 trunk, BiLSTM text); CR loss margin and other-caption weight.
    "ssan": dict(id_weight=1.0, parts=6, resnet_layers=[3, 4, 6, 3], resnet_width=64, word_dim=512,
                 part_dim=1024, relation_dim=512, margin=0.2, other_weight=0.1),
}
METHODS = tuple(DEFAULT_METHOD_ARGS)


def method_args(method: str, overrides: dict | None = None) -> dict:
    """The method's hyper-parameters: defaults updated by `overrides` (unknown keys refused)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    args = dict(DEFAULT_METHOD_ARGS[method])
    unknown = set(overrides or {}) - set(args)
    if unknown:
        raise ValueError(f"unknown {method} argument(s) {sorted(unknown)}; known: {sorted(args)}")
    args.update(overrides or {})
    return args


class Retriever(nn.Module):
    def __init__(self, clip_config: ClipConfig, method: str, num_classes: int, eot_id: int,
                 args: dict | None = None):
        super().__init__()
        self.method = method
        self.args = method_args(method, args)
        self.eot_id = eot_id
        a = self.args
        if method == "ssan":
            self.clip = SSANEncoder(clip_config, a, eot_id)
            id_dim = a["part_dim"]
            # ID losses per part, each classifier shared by both modalities (the global one is `classifier`)
            self.part_classifiers = nn.ModuleList(_classifier(id_dim, num_classes) for _ in range(a["parts"]))
        else:
            self.clip = CLIP(clip_config)
            id_dim = clip_config.embed_dim
        self.classifier = _classifier(id_dim, num_classes)
        if method == "esa":
            dim, a = clip_config.embed_dim, self.args
            self.text_head = SlotSetHead(dim, a["slots"], a["iterations"])
            self.image_head = SlotSetHead(dim, a["slots"], a["iterations"])
        if method == "sen":
            v = clip_config.vision
            self.restorer = RestorationDecoder(clip_config.embed_dim, v.grid, v.patch_size, a["decoder_width"],
                                               a["decoder_layers"], a["decoder_heads"])

    @property
    def set_size(self) -> int:
        return 1 + self.args.get("slots", 0)

    def _text_sets(self, ids: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(global, sets, tokens, mask) of a CLIP text tower (every method but SSAN)."""
        global_feat, tokens, mask = self.clip.encode_text(ids, eot_id=self.eot_id)
        if self.method == "esa":
            return global_feat, self.text_head(global_feat, tokens, mask), tokens, mask
        return global_feat, F.normalize(global_feat, dim=-1).unsqueeze(1), tokens, mask

    def _image_sets(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        global_feat, tokens = self.clip.encode_image(pixels)
        if self.method == "esa":
            patches = tokens[:, 1:]
            keep = torch.ones(patches.shape[:2], dtype=torch.bool, device=patches.device)
            return global_feat, self.image_head(global_feat, patches, keep)
        return global_feat, F.normalize(global_feat, dim=-1).unsqueeze(1)

    def encode_text(self, ids: Tensor) -> Tensor:
        if self.method == "ssan":
            return ssan_set(*self.clip.encode_text(ids))
        return self._text_sets(ids)[1]

    def encode_image(self, pixels: Tensor) -> Tensor:
        if self.method == "ssan":
            return ssan_set(*self.clip.encode_image(pixels))
        return self._image_sets(pixels)[1]

    @property
    def score_params(self) -> dict:
        """How this model's sets are compared: keyword arguments of kernels.search / set_scores."""
        return {"alpha": self.args.get("alpha", 16.0), "weight": self.args.get("set_weight", 0.0)}

    def score(self, query_sets: Tensor, gallery_sets: Tensor, margin: Tensor | None = None) -> Tensor:
        """Ranking scores [Q, N] of embedding sets; the baseline's is plain global cosine.
        Without gradients: the memory-bounded kernels path (blocked on CPU, Triton on GPU).
        With gradients (training): on GPU the fused scores, whose backward recomputes in
        blocks instead of keeping the [Q, N, Kq, Kg] graph; on CPU the torch reference."""
        if not (torch.is_grad_enabled() and (query_sets.requires_grad or gallery_sets.requires_grad)):
            return set_scores(query_sets, gallery_sets, margin=margin, **self.score_params)
        if query_sets.is_cuda:
            return set_scores_with_grad(query_sets, gallery_sets, margin=margin, **self.score_params)
        return set_similarity_reference(query_sets, gallery_sets, margin=margin, **self.score_params)

    def new_parameter_names(self) -> set[str]:
        """Parameters not from a pretrainable backbone (CLIP, or SSAN's ResNet trunk): the recipe
        gives them a larger learning rate."""
        pretrained = "clip.resnet." if self.method == "ssan" else "clip."
        return {n for n, _ in self.named_parameters() if not n.startswith(pretrained)}

    def forward(self, pixels: Tensor, ids: Tensor, labels: Tensor,
               gather: Callable[[Tensor], Tensor] | None = None,
               other_ids: Tensor | None = None) -> dict[str, Tensor]:
        """Training losses of one batch (DDP calls forward). `gather` concatenates a tensor over all processes
        (DDP); the batch-contrastive terms then see every process's samples. `other_ids`: for each
        sample, a caption of another image of the same person (SSAN's CR loss; CaptionDataset's
        `other_caption`)."""
        if self.method == "ssan":
            return self._ssan_losses(pixels, ids, other_ids, labels, gather)
        a = self.args
        image_feat, image_sets = self._image_sets(pixels)
        text_feat, text_sets, text_tokens, text_mask = self._text_sets(ids)
        out = {"id": a["id_weight"] * id_loss(
            self.classifier(image_feat.float()), self.classifier(text_feat.float()), labels)}
        if gather is not None:
            image_feat, text_feat, labels = gather(image_feat), gather(text_feat), gather(labels)
            if self.method == "esa":  # the baseline's sets are its globals: nothing more to gather
                image_sets, text_sets = gather(image_sets), gather(text_sets)
        out["sdm"] = sdm_loss(image_feat.float(), text_feat.float(), labels,
                              logit_scale=1.0 / a["temperature"])
        if self.method == "esa":
            scores = self.score(text_sets.float(), image_sets.float())
            margins = semantic_margins(text_feat.float(), a["m0"], a["m1"])
            out["asm"] = a["asm_weight"] * asm_loss(scores, margins, labels, a["tau"])
            if a["slot_sdm_weight"]:
                slots = slot_chamfer(text_sets.float(), image_sets.float(), a["alpha"])  # [B, B, K, K] inside: small
                out["slot_sdm"] = a["slot_sdm_weight"] * sdm_from_scores(slots, labels, 1.0 / a["temperature"])
            out["diversity"] = a["diversity_weight"] * (
                slot_diversity(text_sets.float()) + slot_diversity(image_sets.float()))
        if self.method == "sen":
            cos = F.normalize(text_feat.float(), dim=-1) @ F.normalize(image_feat.float(), dim=-1).t()
            out["triplet"] = a["triplet_weight"] * hardest_triplet_loss(cos, labels, a["triplet_margin"])
            out["tir"] = a["tir_weight"] * self._restoration_loss(pixels, text_tokens, text_mask)
        return out

    def _restoration_loss(self, pixels: Tensor, text_tokens: Tensor, text_mask: Tensor) -> Tensor:
        """SEN's TIR: restore the colour of masked patches of the grayscale image from the caption."""
        visual = self.clip.visual
        keep = random_keep(pixels.shape[0], visual.grid[0] * visual.grid[1], self.args["mask_ratio"],
                           pixels.device)
        visible = masked_image_tokens(visual, grayscale(pixels), keep)
        pred = self.restorer(visible, keep, text_tokens, text_mask)
        return restoration_loss(pred, patchify(pixels, visual.conv1.kernel_size[0]), keep)

    def _ssan_losses(self, pixels: Tensor, ids: Tensor, other_ids: Tensor | None, labels: Tensor,
                     gather: Callable[[Tensor], Tensor] | None) -> dict[str, Tensor]:
        """ID losses on the global feature and every part; CR loss on the three branches of the score."""
        if other_ids is None:
            raise ValueError("SSAN's CR loss needs other_ids: a caption of another image of the same "
                             "person per sample (CaptionDataset(..., other_caption=True))")
        a = self.args
        image, text, other = (self.clip.encode_image(pixels), self.clip.encode_text(ids),
                              self.clip.encode_text(other_ids))
        classifiers = [self.classifier, *self.part_classifiers]
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


def _classifier(dim: int, num_classes: int) -> nn.Linear:
    layer = nn.Linear(dim, num_classes)
    nn.init.normal_(layer.weight, std=0.001)
    nn.init.zeros_(layer.bias)
    return layer


def build_retriever(config: dict) -> Retriever:
    """A Retriever from a checkpoint's config.json (see trainer/checkpoint.py)."""
    return Retriever(ClipConfig.from_dict(config["model"]), config["method"],
                     config["num_classes"], config["tokenizer"]["eot_id"],
                     config.get("method_args"))

