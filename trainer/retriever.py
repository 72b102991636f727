"""The trained model: a method's modules behind one encoding contract.

Every stage (evaluation, export, serving) encodes through `encode_text` / `encode_image`,
which return embedding sets `[B, K+1, D]`: L2-normalised rows, row 0 the global feature, and
ranks them with `score`. What the modules are, how the sets are made and how the model trains
is the method's (trainer/heads/: one module per method, registered in trainer/heads/__init__.py);
the modules sit directly on the Retriever (`clip`, `classifier`, ...), so checkpoint keys are those
attribute names, and checkpoints, evaluation and export need no method-specific code.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from kernels import set_scores
from kernels.scores_autograd import set_scores_with_grad
from kernels.set_similarity import set_similarity_reference
from trainer.data.pixels import Preprocess
from trainer.heads import get_method
from trainer.heads.base import Gather
from trainer.model import ClipConfig


class Retriever(nn.Module):
    def __init__(self, clip_config: ClipConfig, method: str, num_classes: int, eot_id: int,
                 args: dict | None = None, preprocess: Preprocess | None = None):
        super().__init__()
        # how images become this model's pixels: saved in the checkpoint, read by every stage
        self.preprocess = preprocess or Preprocess(clip_config.vision.image_size)
        if self.preprocess.size != tuple(clip_config.vision.image_size):
            raise ValueError(f"preprocessing size {self.preprocess.size} is not the image tower's "
                             f"{tuple(clip_config.vision.image_size)}")
        self.method = method
        # a plain attribute, not a child module: the method's modules are the Retriever's own
        self.impl = get_method(method, args)
        self.args = self.impl.args
        self.eot_id = eot_id
        self.impl.build(self, clip_config, num_classes)

    @property
    def set_size(self) -> int:
        return self.impl.set_size

    def encode_text(self, ids: Tensor) -> Tensor:
        return self.impl.encode_text(self, ids)

    def encode_image(self, pixels: Tensor) -> Tensor:
        return self.impl.encode_image(self, pixels)

    @property
    def score_params(self) -> dict:
        """How this model's sets are compared: keyword arguments of kernels.search / set_scores."""
        return self.impl.score_params

    def score(self, query_sets: Tensor, gallery_sets: Tensor, margin: Tensor | None = None) -> Tensor:
        """Ranking scores [Q, N] of embedding sets; with weight 0, plain global cosine.
        Without gradients: the memory-bounded kernels path (blocked on CPU, Triton on GPU).
        With gradients (training): on GPU the fused scores, whose backward recomputes in
        blocks instead of keeping the [Q, N, Kq, Kg] graph; on CPU the torch reference."""
        if not (torch.is_grad_enabled() and (query_sets.requires_grad or gallery_sets.requires_grad)):
            return set_scores(query_sets, gallery_sets, margin=margin, **self.score_params)
        if query_sets.is_cuda:
            return set_scores_with_grad(query_sets, gallery_sets, margin=margin, **self.score_params)
        return set_similarity_reference(query_sets, gallery_sets, margin=margin, **self.score_params)

    def new_parameter_names(self) -> set[str]:
        """Parameters not loaded from pretrained weights (the method's `pretrained_prefix`): the
        recipe gives them a larger learning rate."""
        return {n for n, _ in self.named_parameters() if not n.startswith(self.impl.pretrained_prefix)}

    def forward(self, pixels: Tensor, ids: Tensor, labels: Tensor, gather: Gather | None = None,
                other_ids: Tensor | None = None) -> dict[str, Tensor]:
        """Training losses of one batch (DDP calls forward). `gather` concatenates a tensor over all processes
        (DDP); the batch-contrastive terms then see every process's samples. `other_ids`: for each
        sample, a caption of another image of the same person (the method's `dataset_options`
        ask CaptionDataset for it: `other_caption`)."""
        return self.impl.losses(self, pixels, ids, labels, gather, other_ids)


def build_retriever(config: dict) -> Retriever:
    """A Retriever from a checkpoint's config.json (see trainer/checkpoint.py)."""
    return Retriever(ClipConfig.from_dict(config["model"]), config["method"],
                     config["num_classes"], config["tokenizer"]["eot_id"],
                     config.get("method_args"), Preprocess.from_record(config["image"]))
