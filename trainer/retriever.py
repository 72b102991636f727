"""The trained model: CLIP towers plus a method's heads, behind one encoding contract.

Every stage (evaluation, export, serving) encodes through `encode_text` / `encode_image`,
which return embedding sets `[B, K+1, D]`: L2-normalised rows, row 0 the global feature.
The baseline has no set head, so K = 0.
"""
from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from trainer.losses import id_loss, sdm_loss
from trainer.model import CLIP, ClipConfig

METHODS = ("baseline",)
DEFAULT_METHOD_ARGS = {"baseline": {"temperature": 0.02, "id_weight": 1.0}}


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

    @property
    def set_size(self) -> int:
        return 1

    def encode_text(self, ids: Tensor) -> Tensor:
        global_feat, _, _ = self.clip.encode_text(ids, eot_id=self.eot_id)
        return F.normalize(global_feat, dim=-1).unsqueeze(1)

    def encode_image(self, pixels: Tensor) -> Tensor:
        global_feat, _ = self.clip.encode_image(pixels)
        return F.normalize(global_feat, dim=-1).unsqueeze(1)

    def new_parameter_names(self) -> set[str]:
        """Parameters not from the CLIP backbone: the recipe gives them a larger learning rate."""
        return {n for n, _ in self.named_parameters() if not n.startswith("clip.")}

    def forward(self, pixels: Tensor, ids: Tensor, labels: Tensor,
               gather: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
        """Training losses of one batch (DDP calls forward). `gather` concatenates a tensor over all processes
        (DDP); the batch-contrastive terms then see every process's samples."""
        image_feat, _ = self.clip.encode_image(pixels)
        text_feat, _, _ = self.clip.encode_text(ids, eot_id=self.eot_id)
        out = {"id": self.args["id_weight"] * id_loss(
            self.classifier(image_feat.float()), self.classifier(text_feat.float()), labels)}
        if gather is not None:
            image_feat, text_feat, labels = gather(image_feat), gather(text_feat), gather(labels)
        out["sdm"] = sdm_loss(image_feat.float(), text_feat.float(), labels,
                              logit_scale=1.0 / self.args["temperature"])
        return out


def build_retriever(config: dict) -> Retriever:
    """A Retriever from a checkpoint's config.json (see trainer/checkpoint.py)."""
    return Retriever(ClipConfig.from_dict(config["model"]), config["method"],
                     config["num_classes"], config["tokenizer"]["eot_id"],
                     config.get("method_args"))

