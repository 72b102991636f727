"""The trained model: CLIP towers plus a method's heads, behind one encoding contract.

Every stage (evaluation, export, serving) encodes through `encode_text` / `encode_image`,
which return embedding sets `[B, K+1, D]`: L2-normalised rows, row 0 the global feature.
The baseline has no set head, so K = 0; ESA adds a slot head per modality (K slots) and
ranks with smooth-Chamfer set similarity (kernels/set_similarity.py).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels import set_scores
from kernels.fused_scores import set_scores_with_grad
from kernels.set_similarity import set_similarity_reference
from trainer.heads.esa import SlotSetHead
from trainer.losses import asm_loss, id_loss, sdm_loss, semantic_margins, slot_diversity
from trainer.model import CLIP, ClipConfig

_GLOBAL = {"temperature": 0.02, "id_weight": 1.0}  # SDM temperature and ID weight (IRRA)
DEFAULT_METHOD_ARGS = {
    "baseline": dict(_GLOBAL),
    # slots/iterations: the set head; alpha/set_weight: the ranking score; m0/m1/tau: ASM.
    # asm_weight 10: at 1 the ASM term was ~0.5 against SDM's ~17 and barely shaped the sets;
    # 10 beat 1 at R@5/R@10/mAP on the same 3 seeds (benchmarks/results/esa_vs_baseline*.json)
    "esa": dict(_GLOBAL, slots=4, iterations=3, alpha=16.0, set_weight=1.0, m0=0.05, m1=0.25,
                tau=0.05, asm_weight=10.0, diversity_weight=0.1),
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
        self.clip = CLIP(clip_config)
        self.classifier = nn.Linear(clip_config.embed_dim, num_classes)
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)
        if method == "esa":
            dim, a = clip_config.embed_dim, self.args
            self.text_head = SlotSetHead(dim, a["slots"], a["iterations"])
            self.image_head = SlotSetHead(dim, a["slots"], a["iterations"])

    @property
    def set_size(self) -> int:
        return 1 + self.args.get("slots", 0)

    def _text_sets(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        global_feat, tokens, mask = self.clip.encode_text(ids, eot_id=self.eot_id)
        if self.method == "esa":
            return global_feat, self.text_head(global_feat, tokens, mask)
        return global_feat, F.normalize(global_feat, dim=-1).unsqueeze(1)

    def _image_sets(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        global_feat, tokens = self.clip.encode_image(pixels)
        if self.method == "esa":
            patches = tokens[:, 1:]
            keep = torch.ones(patches.shape[:2], dtype=torch.bool, device=patches.device)
            return global_feat, self.image_head(global_feat, patches, keep)
        return global_feat, F.normalize(global_feat, dim=-1).unsqueeze(1)

    def encode_text(self, ids: Tensor) -> Tensor:
        return self._text_sets(ids)[1]

    def encode_image(self, pixels: Tensor) -> Tensor:
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
        """Parameters not from the CLIP backbone: the recipe gives them a larger learning rate."""
        return {n for n, _ in self.named_parameters() if not n.startswith("clip.")}

    def forward(self, pixels: Tensor, ids: Tensor, labels: Tensor,
               gather: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
        """Training losses of one batch (DDP calls forward). `gather` concatenates a tensor over all processes
        (DDP); the batch-contrastive terms then see every process's samples."""
        a = self.args
        image_feat, image_sets = self._image_sets(pixels)
        text_feat, text_sets = self._text_sets(ids)
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
            out["diversity"] = a["diversity_weight"] * (
                slot_diversity(text_sets.float()) + slot_diversity(image_sets.float()))
        return out


def build_retriever(config: dict) -> Retriever:
    """A Retriever from a checkpoint's config.json (see trainer/checkpoint.py)."""
    return Retriever(ClipConfig.from_dict(config["model"]), config["method"],
                     config["num_classes"], config["tokenizer"]["eot_id"],
                     config.get("method_args"))

