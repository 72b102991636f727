"""What the models over the live gallery share (gallery_search, gallery_ingest, gallery_erase):
where the served gallery's live state is, and its global indices. Torch-free: ingest and
erasure work on the LiveStore alone; gallery_search opens the LiveGallery (tensors) on it.

The served gallery is the latest version of REPO/gallery_search (its version policy serves the
latest one); its live state, the additions and erasures since that file was built, is the
folder `live/` beside the file (serving/live_gallery.py). Indices: base item i is
`index_offset + i`; the j-th addition is `added_offset + j` (one server: right after the
base; a shard: a range of its own, so indices stay unique over shards).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.live_store import GALLERY_FILE, LIVE_FOLDER, LiveStore
from serving.models.common import parameters


def served_version(args: dict) -> Path:
    """The folder of the gallery version a model instance works on: its own version folder for
    gallery_search, the latest of gallery_search's for the models beside it."""
    model, gallery_model = Path(args["model_repository"]), parameters(args)["gallery_model"]
    if model.name == gallery_model:
        return model / args["model_version"]
    versions = [p for p in (model.parent / gallery_model).iterdir() if p.name.isdigit() and p.is_dir()]
    return max(versions, key=lambda p: int(p.name))


def global_index(args: dict, base_items: int) -> GlobalIndex:
    params = parameters(args)
    return GlobalIndex(base_items, int(params.get("index_offset") or 0), params.get("added_offset"))


def open_store(args: dict, adder: bool) -> tuple[LiveStore, GlobalIndex]:
    store = LiveStore(served_version(args) / LIVE_FOLDER, parameters(args)["fingerprint"], adder)
    return store, global_index(args, store.base_items)


def open_live(args: dict, **options):
    """gallery_search's LiveGallery (imported here: the other models never load torch)."""
    from serving.live_gallery import LiveGallery
    folder = served_version(args)
    live = LiveGallery(folder / LIVE_FOLDER, folder / GALLERY_FILE, parameters(args)["fingerprint"], **options)
    return live, global_index(args, len(live.base))


class GlobalIndex:
    """Local live-gallery indices <-> the global indices clients see."""

    def __init__(self, base_items: int, index_offset: int, added_offset: str | None):
        self.base, self.offset = base_items, index_offset
        self.added = index_offset + base_items if not added_offset else int(added_offset)

    def to_global(self, local: np.ndarray) -> np.ndarray:
        local = np.asarray(local, dtype=np.int64)
        return np.where(local < self.base, local + self.offset, local - self.base + self.added)

    def to_local(self, index: int) -> int | None:
        """The local index of a global one, or None where it is not this gallery's."""
        if self.offset <= index < self.offset + self.base:
            return index - self.offset
        if index >= self.added:
            return self.base + index - self.added
        return None
