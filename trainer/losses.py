"""Training objectives on the global embeddings (IRRA): SDM and ID."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sdm_loss(image_feats: Tensor, text_feats: Tensor, pids: Tensor, logit_scale: float,
             eps: float = 1e-8) -> Tensor:
    """Similarity distribution matching (IRRA, CVPR'23), both directions.

    KL divergence between the softmax of scaled cosine similarities and the true matching
    distribution (uniform over pairs of the same person). Row i of the text->image
    similarity is the text of sample i against every image in the batch.
    """
    labels = (pids.view(-1, 1) == pids.view(1, -1)).float()
    target = labels / labels.sum(dim=1, keepdim=True)
    image = F.normalize(image_feats, dim=-1)
    text = F.normalize(text_feats, dim=-1)
    t2i = logit_scale * text @ image.t()
    loss = 0.0
    for logits in (t2i, t2i.t()):
        pred = logits.softmax(dim=1)
        loss = loss + (pred * (logits.log_softmax(dim=1) - torch.log(target + eps))).sum(1).mean()
    return loss


def id_loss(image_logits: Tensor, text_logits: Tensor, labels: Tensor) -> Tensor:
    """Identity classification of both modalities through one shared classifier."""
    return (F.cross_entropy(image_logits, labels) + F.cross_entropy(text_logits, labels)) / 2
