"""Batch samplers, deterministic and DDP-aware: identity-balanced batches (P identities x K
instances, tbps's default) and plain random batches (IRRA's default `--sampler random`).

Per epoch, with K = ``num_instances`` and P = ``batch_size // K``:

1. every identity's sample indices are shuffled and cut into chunks of K. An identity with fewer
   than K samples gets one chunk of all its samples topped up by drawing from them *with
   replacement*; an identity with n >= K samples whose n is not a multiple of K has its last
   chunk topped up with other samples of the same identity (no repeats inside a chunk). So every
   sample is in at least one chunk and a few appear twice: "about once per epoch".
2. batches are built from P chunks of P *different* identities, identities drawn at random with
   probability proportional to their remaining chunks, constrained so that the number of
   batches is always the maximum possible, ``m = max{m : sum_i min(c_i, m) >= m * P}`` (c_i is
   identity i's chunk count). This makes ``len()`` a function of the labels alone -- the same
   every epoch -- and drops only chunks that cannot fit (an identity with more than m chunks).
3. the batch order is shuffled; with ``drop_last=False`` the chunks left over follow as a
   final few batches of up to P chunks each (identities may repeat inside those).

When there are fewer identities than P, P becomes the number of identities: batches then hold
all identities, K samples each, and are smaller than ``batch_size``.

Randomness comes only from a numpy Generator seeded with (seed, epoch): global RNG state has no
effect. With ``world_size`` W > 1 every rank computes the same batch list and rank r takes
batches r, r + W, r + 2W, ...; the list is first cut to a multiple of W (``drop_last``) or
extended by wrapping around to its start, so all ranks yield the same number of batches and,
with ``drop_last``, disjoint ones.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

__all__ = ["IdentityBatchSampler", "RandomBatchSampler"]


def _int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _max_batches(counts: np.ndarray, p: int) -> int:
    """Largest m with sum(min(counts, m)) >= m * p (binary search; the predicate is monotone)."""
    if p <= 0 or counts.size == 0:
        return 0
    lo, hi = 0, int(counts.sum()) // p
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if int(np.minimum(counts, mid).sum()) >= mid * p:
            lo = mid
        else:
            hi = mid - 1
    return lo


class IdentityBatchSampler(torch.utils.data.Sampler):
    """Yields lists of dataset indices, P identities x K instances each (see module docstring)."""

    def __init__(self, labels: Sequence[int], batch_size: int, num_instances: int = 4,
                 seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = True):
        batch_size = _int("batch_size", batch_size, 1)
        num_instances = _int("num_instances", num_instances, 1)
        if batch_size % num_instances or batch_size < 2 * num_instances:
            raise ValueError(f"batch_size ({batch_size}) must be a multiple of num_instances "
                             f"({num_instances}) and at least 2 * num_instances "
                             f"({2 * num_instances}), so that a batch holds >= 2 identities")
        self.seed = _int("seed", seed, 0)
        self.world_size = _int("world_size", world_size, 1)
        self.rank = _int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank ({rank}) must be < world_size ({world_size})")
        self.batch_size, self.num_instances, self.drop_last = batch_size, num_instances, bool(drop_last)
        self.epoch = 0

        labels = np.asarray(list(labels))
        if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
            raise ValueError("labels must be a flat sequence of integers")
        self.num_samples = int(labels.size)
        order = np.argsort(labels, kind="stable")
        _, starts, sizes = np.unique(labels[order], return_index=True, return_counts=True)
        self._groups = [order[s:s + n] for s, n in zip(starts, sizes)]   # indices per identity
        k = num_instances
        self._chunks = np.array([max(1, -(-n // k)) for n in sizes], dtype=np.int64)
        self.num_ids = len(self._groups)
        self.ids_per_batch = min(batch_size // k, self.num_ids)
        self._full = _max_batches(self._chunks, self.ids_per_batch)
        left = int(self._chunks.sum()) - self._full * self.ids_per_batch
        extra = 0 if self.drop_last or not self.ids_per_batch else -(-left // self.ids_per_batch)
        self._total = self._full + extra                  # batches over all ranks, before the cut

    def set_epoch(self, epoch: int) -> None:
        self.epoch = _int("epoch", epoch, 0)

    def __len__(self) -> int:
        w = self.world_size
        return self._total // w if self.drop_last else -(-self._total // w)

    def _epoch_batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        k, p = self.num_instances, self.ids_per_batch
        chunks: list[list[np.ndarray]] = []
        for idx in self._groups:
            idx = rng.permutation(idx)
            n = len(idx)
            if n < k:
                cs = [np.concatenate([idx, rng.choice(idx, k - n, replace=True)])]
            else:
                cs = [idx[s:s + k] for s in range(0, n, k)]
                short = k - len(cs[-1])
                if short:
                    others = idx[:n - len(cs[-1])]
                    cs[-1] = np.concatenate([cs[-1], rng.choice(others, short, replace=False)])
            chunks.append(cs)

        remaining = self._chunks.copy()
        batches: list[list[int]] = []
        for left in range(self._full, 0, -1):           # `left` batches still to build
            capped = np.minimum(remaining, left)
            slack = int(capped.sum()) - left * p
            critical = np.flatnonzero(remaining >= left)
            need = max(0, len(critical) - slack)        # critical ids that must be in this batch
            chosen = rng.choice(critical, need, replace=False) if need else np.empty(0, np.int64)
            weights = remaining.astype(np.float64)
            weights[chosen] = 0.0
            if p > need:                                # weighted draw without replacement
                keys = np.log1p(-rng.random(len(weights))) / np.where(weights > 0, weights, 1.0)
                keys[weights <= 0] = -np.inf
                rest = np.argpartition(-keys, p - need - 1)[:p - need]
                chosen = np.concatenate([chosen, rest])
            batch = []
            for i in chosen:
                remaining[i] -= 1
                batch.extend(chunks[i][remaining[i]].tolist())
            batches.append(batch)
        order = rng.permutation(len(batches))
        batches = [batches[i] for i in order]

        if not self.drop_last and p:
            leftover = [c for i in rng.permutation(self.num_ids)
                        for c in chunks[i][:remaining[i]]]
            for s in range(0, len(leftover), p):
                batches.append(np.concatenate(leftover[s:s + p]).tolist())
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._epoch_batches()
        w = self.world_size
        n = len(self)
        if n * w > len(batches):                        # not drop_last: wrap around
            batches = batches + [batches[i % len(batches)] for i in range(n * w - len(batches))]
        for b in batches[self.rank:n * w:w]:
            yield [int(i) for i in b]


class RandomBatchSampler(torch.utils.data.Sampler):
    """Batches of a random permutation of all samples, as a shuffling DataLoader makes them (IRRA's
    random sampler): a person's captions land in a batch only by chance. The permutation comes from
    (seed, epoch) alone. One process keeps the last, smaller batch (the DataLoader's default); with
    ``world_size`` W > 1 only full batches are used, cut to a multiple of W, rank r taking batches
    r, r + W, ...: every process then gathers equal batches for the batch-contrastive losses."""

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.num_samples = _int("num_samples", num_samples, 0)
        self.batch_size = _int("batch_size", batch_size, 1)
        self.seed = _int("seed", seed, 0)
        self.world_size = _int("world_size", world_size, 1)
        self.rank = _int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank ({rank}) must be < world_size ({world_size})")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = _int("epoch", epoch, 0)

    def __len__(self) -> int:
        if self.world_size == 1:
            return -(-self.num_samples // self.batch_size)
        return self.num_samples // self.batch_size // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        w, b = self.world_size, self.batch_size
        for k in range(self.rank, len(self) * w, w):
            yield order[k * b:(k + 1) * b].tolist()
