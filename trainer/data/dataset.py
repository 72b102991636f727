"""torch Datasets over a split's ImageEntry list: one item per caption (training) or per image
(evaluation)."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from trainer.data.formats import ImageEntry, caption_samples, pid_map
from trainer.data.pos_tagger import prune_caption
from trainer.data.transforms import load_image

__all__ = ["CaptionDataset", "ImageDataset"]


class CaptionDataset(torch.utils.data.Dataset):
    """One item per caption: its image (transformed), its token ids and its identity label.

    ``tokenize(list_of_texts)`` must return an integer array [B, context_length] (the project's
    Tokenizer does); every caption is tokenized once here. ``labels`` maps original pid -> class
    (``pid_map(entries)`` when not given). Items are dicts: ``pixels`` float32 [3, H, W],
    ``ids`` int32 [context_length], ``label`` int64 scalar, ``image_index`` int64 scalar (the
    image's index in ``entries``).

    Method options (the draws use torch's global RNG, like the transforms, so a resumed run replays them):
    ``prune_p``: SEN's pruning augmentation; with this probability ``ids`` are those of the caption
    cut to its pronouns, nouns and adjectives (trainer/data/pos_tagger.py; tagged once, here).
    ``other_caption``: SSAN's CR loss; items also hold ``other_ids``, a caption drawn from another
    image of the same person (from the same image when the person has one image; itself when that
    image has one caption).
    """

    def __init__(self, entries: Sequence[ImageEntry], tokenize: Callable[[list[str]], np.ndarray],
                 transform: Callable, labels: dict[int, int] | None = None, *, prune_p: float = 0.0,
                 other_caption: bool = False):
        self.entries = list(entries)
        self.transform = transform
        samples = caption_samples(self.entries)
        self.label_map = dict(pid_map(self.entries) if labels is None else labels)
        missing = sorted({pid for _, _, pid in samples if pid not in self.label_map})
        if missing:
            raise ValueError(f"labels has no class for person ids {missing[:10]}"
                             f"{' ...' if len(missing) > 10 else ''}")
        self.labels: list[int] = [int(self.label_map[pid]) for _, _, pid in samples]
        self.captions: list[str] = [c for _, c, _ in samples]
        ids = np.asarray(tokenize(self.captions))
        if not samples and ids.ndim != 2:
            ids = np.zeros((0, 77), np.int32)
        if ids.ndim != 2 or ids.shape[0] != len(samples) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"tokenize returned a {ids.dtype} array of shape {ids.shape}; expected "
                             f"integers of shape [{len(samples)}, context_length]")
        # Whole tensors, not Python lists: cheap to index and shared by forked DataLoader workers.
        self._ids = torch.from_numpy(ids.astype(np.int32, copy=False))
        self._image_index = torch.tensor([i for i, _, _ in samples], dtype=torch.int64)
        self._labels = torch.tensor(self.labels, dtype=torch.int64)
        if not 0.0 <= prune_p <= 1.0:
            raise ValueError(f"prune_p must be a probability in [0, 1], got {prune_p!r}")
        self.prune_p = float(prune_p)
        self._pruned_ids = None
        if self.prune_p > 0:
            pruned = np.asarray(tokenize([prune_caption(c) for c in self.captions]))
            self._pruned_ids = torch.from_numpy(pruned.astype(np.int32, copy=False))
        self._others = _other_captions(self._image_index.tolist(), self.labels) if other_caption else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        img = int(self._image_index[i])
        ids = self._ids[i]
        if self._pruned_ids is not None and torch.rand(1).item() < self.prune_p:
            ids = self._pruned_ids[i]
        item = {"pixels": self.transform(load_image(self.entries[img].path)),
                "ids": ids,
                "label": self._labels[i],
                "image_index": self._image_index[i]}
        if self._others is not None:
            others = self._others[i]
            item["other_ids"] = self._ids[others[int(torch.randint(len(others), (1,)).item())]]
        return item


def _other_captions(image_index: list[int], labels: list[int]) -> list[list[int]]:
    """For each caption sample, the samples it may draw its "other caption" from: captions of the
    person's other images; failing those, the other captions of its own image; failing those, itself."""
    by_label: dict[int, list[int]] = {}
    for j, label in enumerate(labels):
        by_label.setdefault(label, []).append(j)
    out = []
    for i, label in enumerate(labels):
        same = by_label[label]
        other_images = [j for j in same if image_index[j] != image_index[i]]
        same_image = [j for j in same if image_index[j] == image_index[i] and j != i]
        out.append(other_images or same_image or [i])
    return out


class ImageDataset(torch.utils.data.Dataset):
    """One item per image, for evaluation: ``pixels`` [3, H, W] and ``image_index`` (int64)."""

    def __init__(self, entries: Sequence[ImageEntry], transform: Callable):
        self.entries = list(entries)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict:
        i = range(len(self.entries))[i]            # IndexError out of range; negative i allowed
        return {"pixels": self.transform(load_image(self.entries[i].path)),
                "image_index": torch.tensor(i, dtype=torch.int64)}
