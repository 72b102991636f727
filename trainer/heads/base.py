"""The interface every training method implements; trainer/heads/__init__.py registers them.

A method is a plain object, not an nn.Module: `build` registers the method's modules directly on
the Retriever (`clip`, `classifier`, ...), so checkpoint keys are those attribute names and do not
depend on how the method's code is organised. Every other method receives that Retriever.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar

from torch import Tensor, nn

from trainer.model import ClipConfig

if TYPE_CHECKING:
    from trainer.retriever import Retriever

Gather = Callable[[Tensor], Tensor]  # concatenates a tensor over all processes (DDP)


class Method:
    name: ClassVar[str]
    defaults: ClassVar[dict]  # every hyper-parameter, with its default; overrides must be among them
    pretrained_prefix: ClassVar[str] = "clip."  # parameters loaded by `pretrained`; the rest are new

    def __init__(self, args: dict):
        self.args = args

    def build(self, model: Retriever, clip_config: ClipConfig, num_classes: int) -> None:
        """Register the method's modules on `model` (its `eot_id` is set)."""
        raise NotImplementedError

    def encode_text(self, model: Retriever, ids: Tensor) -> Tensor:
        """Token ids [B, L] -> embedding sets [B, K+1, D], unit rows, row 0 the global feature."""
        raise NotImplementedError

    def encode_image(self, model: Retriever, pixels: Tensor) -> Tensor:
        """Pixels [B, 3, H, W] (CLIP-normalised) -> embedding sets [B, K+1, D], as encode_text."""
        raise NotImplementedError

    def losses(self, model: Retriever, pixels: Tensor, ids: Tensor, labels: Tensor, gather: Gather | None,
               other_ids: Tensor | None) -> dict[str, Tensor]:
        """The weighted training losses of one batch (see Retriever.forward)."""
        raise NotImplementedError

    def pretrained(self, path: str, config: ClipConfig) -> tuple[ClipConfig, Callable[[Retriever], None]]:
        """Pretrained weights at `path` (TrainConfig.init): the model config to build with (`config`
        is the named one, its vocabulary the tokenizer's), and a function loading them into the built model."""
        raise NotImplementedError

    @property
    def set_size(self) -> int:
        return 1

    @property
    def score_params(self) -> dict:
        """Keyword arguments of kernels.search / set_scores; weight 0: plain global cosine."""
        return {"alpha": 16.0, "weight": 0.0}

    @property
    def dataset_options(self) -> dict:
        """Keyword arguments of trainer.data.dataset.CaptionDataset the training set needs."""
        return {}


def classifier(dim: int, num_classes: int) -> nn.Linear:
    """The identity classifier of the ID loss (IRRA's initialisation)."""
    layer = nn.Linear(dim, num_classes)
    nn.init.normal_(layer.weight, std=0.001)
    nn.init.zeros_(layer.bias)
    return layer
