"""torch Datasets over a split's ImageEntry list: one item per caption (training) or per image
(evaluation)."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from trainer.data.formats import ImageEntry, caption_samples, pid_map
from trainer.data.transforms import load_image

__all__ = ["CaptionDataset", "ImageDataset"]


class CaptionDataset(torch.utils.data.Dataset):
    """One item per caption: its image (transformed), its token ids and its identity label.

    ``tokenize(list_of_texts)`` must return an integer array [B, context_length] (the project's
    Tokenizer does); every caption is tokenized once here. ``labels`` maps original pid -> class
    (``pid_map(entries)`` when not given). Items are dicts: ``pixels`` float32 [3, H, W],
    ``ids`` int32 [context_length], ``label`` int64 scalar, ``image_index`` int64 scalar (the
    image's index in ``entries``).
    """

    def __init__(self, entries: Sequence[ImageEntry], tokenize: Callable[[list[str]], np.ndarray],
                 transform: Callable, labels: dict[int, int] | None = None):
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

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        img = int(self._image_index[i])
        return {"pixels": self.transform(load_image(self.entries[img].path)),
                "ids": self._ids[i],
                "label": self._labels[i],
                "image_index": self._image_index[i]}


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
