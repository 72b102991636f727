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


def semantic_margins(text_feats: Tensor, m0: float, m1: float) -> Tensor:
    """Per-pair margins m0 + m1 * d_ij [B, B], d_ij the cosine distance between the captions'
    embeddings, detached and clipped to [0, 1]: near-identical descriptions of different
    people get a small margin (text may not tell them apart), unrelated ones a large one."""
    text = F.normalize(text_feats.detach(), dim=-1)
    return m0 + m1 * (1 - text @ text.t()).clamp(0, 1)


def asm_loss(scores: Tensor, margins: Tensor, pids: Tensor, tau: float) -> Tensor:
    """Adaptive semantic margin ranking loss, both directions.

    scores [B, B]: text i against image j, positives on the diagonal; negatives are the
    pairs of different people. For each anchor, a smooth hinge over its negatives:
    tau * log(1 + sum_j exp((s_ij + m_ij - s_ii) / tau)), the soft maximum of zero and the
    margin violations, so the hardest negatives dominate without a hard max's sparse gradient.
    """
    other = pids.view(-1, 1) != pids.view(1, -1)
    loss = 0.0
    for s in (scores, scores.t()):  # text anchors, then image anchors (margins are symmetric)
        violation = ((s + margins - s.diagonal().view(-1, 1)) / tau).masked_fill(~other, float("-inf"))
        zero = torch.zeros_like(violation[:, :1])  # log(1 + sum exp) = logsumexp([0, ...])
        loss = loss + tau * torch.logsumexp(torch.cat([zero, violation], dim=1), dim=1).mean()
    return loss


def slot_diversity(sets: Tensor) -> Tensor:
    """Mean squared cosine between different slots (rows 1..K) of each set: keeps slots apart."""
    slots = sets[:, 1:]
    k = slots.shape[1]
    if k < 2:
        return sets.new_zeros(())
    gram = slots @ slots.transpose(1, 2)
    off = gram - torch.diag_embed(gram.diagonal(dim1=1, dim2=2))
    return off.pow(2).sum((1, 2)).mean() / (k * (k - 1))
