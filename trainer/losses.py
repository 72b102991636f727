"""Training objectives: SDM and ID (IRRA), ASM (ESA), the hardest-negative triplet (SEN), CR (SSAN)."""
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
    image = F.normalize(image_feats, dim=-1)
    text = F.normalize(text_feats, dim=-1)
    return sdm_from_scores(text @ image.t(), pids, logit_scale, eps)


def sdm_from_scores(t2i: Tensor, pids: Tensor, logit_scale: float, eps: float = 1e-8) -> Tensor:
    """SDM on a given text-to-image similarity matrix [B, B] (row i: text i against every image)."""
    labels = (pids.view(-1, 1) == pids.view(1, -1)).float()
    target = labels / labels.sum(dim=1, keepdim=True)
    t2i = logit_scale * t2i
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


def hardest_triplet_loss(scores: Tensor, pids: Tensor, margin: float) -> Tensor:
    """SEN's cross-modal triplet, both directions: each anchor against its hardest in-batch negative
    (another person's item of the other modality, highest cosine), distance 1 - cos, so the hinge is
    relu(margin + s_an - s_ap). scores [B, B]: text i against image j, positives on the diagonal."""
    other = pids.view(-1, 1) != pids.view(1, -1)
    loss = 0.0
    for s in (scores, scores.t()):
        hardest = s.masked_fill(~other, float("-inf")).amax(dim=1)
        loss = loss + F.relu(margin + hardest - s.diagonal()).mean()
    return loss


def _semi_hard_triplet(scores: Tensor, pids: Tensor, margins: Tensor) -> Tensor:
    """Summed over anchors (rows; positives on the diagonal), as SSAN: each anchor's semi-hard negative,
    one with 0 < s_an + m - s_ap < m (closer than the margin, not closer than the positive). SSAN draws
    one at random; here the hardest of them, so the loss is deterministic. Anchors without one add 0."""
    violation = scores + margins.view(-1, 1) - scores.diagonal().view(-1, 1)
    semi_hard = (pids.view(-1, 1) != pids.view(1, -1)) & (violation > 0) & (violation < margins.view(-1, 1))
    return violation.masked_fill(~semi_hard, 0.0).amax(dim=1).sum()


def cr_margins(scores: Tensor, scores_other: Tensor, margin: float) -> Tensor:
    """SSAN's adaptive margin per pair i: (l + 1) / 2 * margin, l = |cos(v_i, t'_i)| / |cos(v_i, t_i)|
    clipped to 1, t' a caption of another image of the same person (detached)."""
    ratio = scores_other.diagonal().detach().abs() / scores.diagonal().detach().abs().clamp_min(1e-8)
    return (ratio.clamp(max=1.0) + 1) / 2 * margin


def cr_loss(scores: Tensor, scores_other: Tensor, pids: Tensor, margin: float = 0.2,
            other_weight: float = 0.1) -> Tensor:
    """SSAN's compound ranking loss: a bidirectional semi-hard triplet on image-caption pairs with
    a fixed margin, plus `other_weight` x the same on pairs of an image and a caption of another
    image of its person, with the adaptive margin of `cr_margins`. scores / scores_other [B, B]:
    image i against caption j (resp. the other caption of sample j)."""
    fixed = scores.new_full((scores.shape[0],), margin)
    adaptive = cr_margins(scores, scores_other, margin)
    loss = 0.0
    for s, m, w in ((scores, fixed, 1.0), (scores_other, adaptive, other_weight)):
        loss = loss + w * (_semi_hard_triplet(s, pids, m) + _semi_hard_triplet(s.t(), pids, m))
    return loss
