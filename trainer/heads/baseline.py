"""The baseline (IRRA without its MLM): CLIP towers, ID loss and SDM on the global features.

Its set is the global feature alone (K = 0). ESA and SEN build on it: the same towers, losses and
pretrained weights (OpenAI CLIP), with their own heads and terms.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch.nn.functional as F
from torch import Tensor

from trainer.heads.base import Gather, Method, classifier
from trainer.losses import id_loss, sdm_loss
from trainer.model import CLIP, ClipConfig, load_openai_clip

if TYPE_CHECKING:
    from trainer.retriever import Retriever


class Baseline(Method):
    name = "baseline"
    defaults = {"temperature": 0.02, "id_weight": 1.0}  # SDM temperature and ID weight (IRRA)

    def build(self, model: Retriever, clip_config: ClipConfig, num_classes: int) -> None:
        model.clip = CLIP(clip_config)
        model.classifier = classifier(clip_config.embed_dim, num_classes)

    def pretrained(self, path: str, config: ClipConfig) -> tuple[ClipConfig, Callable[[Retriever], None]]:
        # the weights define the architecture and vocabulary; only the image size is the config's
        clip = load_openai_clip(path, image_size=tuple(config.vision.image_size))
        return clip.config, lambda model: model.clip.load_state_dict(clip.state_dict())

    def text_features(self, model: Retriever, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(global [B, D], tokens [B, L, D], mask [B, L]) of the text tower."""
        return model.clip.encode_text(ids, eot_id=model.eot_id)

    def text_set(self, model: Retriever, global_feat: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
        return F.normalize(global_feat, dim=-1).unsqueeze(1)

    def image_set(self, model: Retriever, global_feat: Tensor, tokens: Tensor) -> Tensor:
        return F.normalize(global_feat, dim=-1).unsqueeze(1)

    def encode_text(self, model: Retriever, ids: Tensor) -> Tensor:
        return self.text_set(model, *self.text_features(model, ids))

    def encode_image(self, model: Retriever, pixels: Tensor) -> Tensor:
        return self.image_set(model, *model.clip.encode_image(pixels))

    def losses(self, model: Retriever, pixels: Tensor, ids: Tensor, labels: Tensor, gather: Gather | None,
               other_ids: Tensor | None) -> dict[str, Tensor]:
        image_feat, _ = model.clip.encode_image(pixels)
        text_feat, _, _ = self.text_features(model, ids)
        return self.global_losses(model, image_feat, text_feat, labels, gather)[0]

    def global_losses(self, model: Retriever, image_feat: Tensor, text_feat: Tensor, labels: Tensor,
                      gather: Gather | None, *more: Tensor) -> tuple[dict[str, Tensor], list[Tensor]]:
        """The ID loss (this process's samples) and SDM (every process's); returns the losses and
        [image_feat, text_feat, labels, *more] gathered over processes, for the method's own terms."""
        a = self.args
        out = {"id": a["id_weight"] * id_loss(
            model.classifier(image_feat.float()), model.classifier(text_feat.float()), labels)}
        gathered = [image_feat, text_feat, labels, *more]
        if gather is not None:
            gathered = [gather(x) for x in gathered]
        image_feat, text_feat, labels = gathered[:3]
        out["sdm"] = sdm_loss(image_feat.float(), text_feat.float(), labels, logit_scale=1.0 / a["temperature"])
        return out, gathered
