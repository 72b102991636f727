"""Retrieval evaluation with the field's protocol (IRRA).

Text-to-image: queries = all captions of the split, gallery = all its images, positives =
every image of the query's person, nothing excluded. Image-to-text is the transpose.
R@K = share of queries with a positive in the top K; AP is non-interpolated over the full
ranking; INP = positives / rank of the last positive. Ties rank the lower gallery index
first. Metrics are accumulated over blocks of queries, so a 20,000 x 20,000 problem needs
a few hundred MB, not the full matrix and its argsort at once.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

METRICS = ("R1", "R5", "R10", "mAP", "mINP")
BLOCK = 512
GALLERY_BLOCK = 2048  # 512 x 2048 x (K+1)^2 set-element cosines: ~100 MB at K = 4


class RankAccumulator:
    """Sums of per-query metrics over blocks of queries against one gallery."""

    def __init__(self, gallery_pids):
        self.gallery_pids = torch.as_tensor(np.asarray(gallery_pids)).long()
        if self.gallery_pids.numel() == 0:
            raise ValueError("empty gallery: nothing to rank")
        n = self.gallery_pids.numel()
        self.ranks = torch.arange(1, n + 1, dtype=torch.float32)
        self.hits = {k: 0.0 for k in (1, 5, 10)}
        self.ap = self.inp = 0.0
        self.queries = self.answerable = 0

    def update(self, similarity: Tensor, query_pids) -> None:
        similarity = torch.as_tensor(similarity).float().cpu()
        query_pids = torch.as_tensor(np.asarray(query_pids)).long().view(-1, 1)
        if similarity.shape != (query_pids.shape[0], self.gallery_pids.numel()):
            raise ValueError(f"similarity shape {tuple(similarity.shape)} does not match "
                             f"{query_pids.shape[0]} queries x {self.gallery_pids.numel()} gallery items")
        order = torch.sort(similarity, dim=1, descending=True, stable=True).indices
        matches = self.gallery_pids[order] == query_pids
        found = matches.cumsum(1)
        for k in self.hits:
            self.hits[k] += (found[:, min(k, found.shape[1]) - 1] > 0).sum().item()
        positives = found[:, -1].float()
        has = positives > 0
        precision_at_hits = (found.float() / self.ranks) * matches
        self.ap += (precision_at_hits.sum(1)[has] / positives[has]).sum().item()
        last_rank = (matches * self.ranks).amax(1)
        self.inp += (positives[has] / last_rank[has]).sum().item()
        self.queries += matches.shape[0]
        self.answerable += int(has.sum())

    def result(self) -> dict[str, float]:
        """Percentages. R@K counts queries without any positive as misses; mAP and mINP
        average over queries that have one (they are undefined otherwise)."""
        if self.queries == 0:
            raise ValueError("no queries to evaluate")
        denom = max(self.answerable, 1)
        return {"R1": 100 * self.hits[1] / self.queries, "R5": 100 * self.hits[5] / self.queries,
                "R10": 100 * self.hits[10] / self.queries, "mAP": 100 * self.ap / denom,
                "mINP": 100 * self.inp / denom}


def rank_metrics(similarity, query_pids, gallery_pids, block_size: int = BLOCK) -> dict[str, float]:
    """R1/R5/R10/mAP/mINP (percent) of a [Q, N] similarity matrix (tensor or array)."""
    similarity = torch.as_tensor(similarity)
    acc = RankAccumulator(gallery_pids)
    query_pids = np.asarray(query_pids)
    for start in range(0, similarity.shape[0], block_size):
        acc.update(similarity[start:start + block_size], query_pids[start:start + block_size])
    return acc.result()


def global_cosine(query_sets: Tensor, gallery_sets: Tensor, margin: Tensor | None = None) -> Tensor:
    """Cosine of the global rows (row 0) of L2-normalised embedding sets, minus the gallery
    margin if any: [Q, N]. The signature every score function has (see Retriever.score)."""
    score = query_sets[:, 0] @ gallery_sets[:, 0].T
    return score if margin is None else score - margin


def blocked_metrics(query_sets: Tensor, query_pids, gallery_sets: Tensor, gallery_pids,
                    score: Callable[..., Tensor] = global_cosine, margin: Tensor | None = None,
                    block_size: int = BLOCK, gallery_block: int = GALLERY_BLOCK) -> dict[str, float]:
    """rank_metrics of score(query_sets, gallery_sets, margin), one block of queries at a time;
    the gallery (and its margin) is scored in chunks too, so set-to-set intermediates stay bounded."""
    acc = RankAccumulator(gallery_pids)
    query_pids = np.asarray(query_pids)
    for start in range(0, query_sets.shape[0], block_size):
        scores = chunked_scores(score, query_sets[start:start + block_size], gallery_sets, margin,
                                gallery_block)
        acc.update(scores, query_pids[start:start + block_size])
    return acc.result()


def chunked_scores(score: Callable[..., Tensor], queries: Tensor, gallery_sets: Tensor,
                   margin: Tensor | None = None, gallery_block: int = GALLERY_BLOCK) -> Tensor:
    """score(queries, gallery_sets, margin) [Q, N], computed over chunks of the gallery."""
    return torch.cat([score(queries, gallery_sets[g:g + gallery_block],
                            None if margin is None else margin[g:g + gallery_block])
                      for g in range(0, gallery_sets.shape[0], gallery_block)], dim=1)


@torch.no_grad()
def encode_captions(model, tokenizer, captions: Sequence[str], device: torch.device | str = "cpu",
                    batch_size: int = 128, progress: bool = False) -> Tensor:
    """Embedding sets [len(captions), K+1, D] of captions, in float32 on the CPU."""
    device = torch.device(device)
    sets = []
    for i in tqdm(range(0, len(captions), batch_size), desc="encode captions", disable=not progress):
        ids = torch.from_numpy(tokenizer(list(captions[i:i + batch_size])))
        sets.append(model.encode_text(ids.to(device)).float().cpu())
    return torch.cat(sets) if sets else torch.empty(0, model.set_size, model.clip.config.embed_dim)


@torch.no_grad()
def encode_split(model, tokenizer, entries: Sequence, device: torch.device | str = "cpu",
                 batch_size: int = 128, workers: int = 0, progress: bool = False):
    """Embedding sets of every caption and every image of a split, with their person ids."""
    from trainer.data.dataset import ImageDataset
    from trainer.data.transforms import build_transform

    device = torch.device(device)
    images = ImageDataset(entries, build_transform(model.preprocess, train=False))
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, num_workers=workers)
    image_sets = torch.cat([model.encode_image(b["pixels"].to(device)).float().cpu()
                            for b in tqdm(loader, desc="encode images", disable=not progress)])
    text_sets = encode_captions(model, tokenizer, [c for e in entries for c in e.captions], device,
                                batch_size, progress)
    return text_sets, [e.pid for e in entries for _ in e.captions], image_sets, [e.pid for e in entries]


def evaluate(model, tokenizer, entries: Sequence, device: torch.device | str = "cpu",
             batch_size: int = 128, workers: int = 0, progress: bool = False,
             margin_bank: Sequence[str] = (), margin_beta: float = 1.0) -> dict:
    """{"t2i": metrics, "i2t": metrics} of a model on a list of ImageEntry. With a bank of
    captions of other people (`margin_bank`, e.g. the training captions), text-to-image
    ranking subtracts the gallery adaptive margin b_g (see adaptive_margin)."""
    if not entries:
        raise ValueError("no images in the evaluation split")
    was_training = model.training
    model.eval()
    try:
        text, text_pids, image, image_pids = encode_split(model, tokenizer, entries, device,
                                                          batch_size, workers, progress)
        margin = None
        if margin_bank:
            bank = encode_captions(model, tokenizer, margin_bank, device, batch_size, progress)
            margin = adaptive_margin(bank, image, model.score, beta=margin_beta)
    finally:
        model.train(was_training)
    return split_metrics(text, text_pids, image, image_pids, model.score, margin)


def split_metrics(text_sets: Tensor, text_pids, image_sets: Tensor, image_pids,
                  score: Callable[..., Tensor] = global_cosine, margin: Tensor | None = None) -> dict:
    """{"t2i": metrics, "i2t": metrics} of encoded captions and images (see encode_split);
    `score` is the model's (Retriever.score), symmetric in its two arguments; the gallery
    margin, if any, applies to text-to-image (images are the gallery there)."""
    return {"t2i": blocked_metrics(text_sets, text_pids, image_sets, image_pids, score, margin),
            "i2t": blocked_metrics(image_sets, image_pids, text_sets, text_pids, score)}


def adaptive_margin(bank_sets: Tensor, gallery_sets: Tensor, score: Callable[..., Tensor],
                    k: int = 10, beta: float = 1.0, block_size: int = BLOCK) -> Tensor:
    """Per-gallery-item margin b_g [N]: beta x the mean of item g's k highest scores against a
    bank of queries that describe other people (e.g. the training captions). An image that
    scores high for everything (a "hub") gets a large margin and is damped in the ranking."""
    if bank_sets.shape[0] < k:
        raise ValueError(f"a bank of {bank_sets.shape[0]} queries is smaller than k={k}")
    top = None
    for start in range(0, bank_sets.shape[0], block_size):
        block = chunked_scores(score, bank_sets[start:start + block_size], gallery_sets)  # [b, N]
        top = block if top is None else torch.cat([top, block])
        top = top.topk(min(k, top.shape[0]), dim=0).values  # running top-k per gallery item
    return beta * top.mean(0)
