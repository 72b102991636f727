"""What the models over the live gallery share (gallery_search, gallery_ingest, gallery_erase):
where the served gallery's live state is, and its global indices. Torch-free: ingest and
erasure work on the LiveStore alone; gallery_search opens the LiveGallery (tensors) on it.

The served gallery is the latest version of REPO/gallery_search (its version policy serves the
latest one), or with local shards of each REPO/gallery_search_<i>; its live state, the additions and erasures since that file was built, is the
folder `live/` beside the file (serving/live_gallery.py). Indices: base item i is
`index_offset + i`; the j-th addition is `added_offset + j` (one server: right after the
base; a shard, local or a server of its own: a range of its own, so indices stay unique over
shards).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from serving.live_store import GALLERY_FILE, LIVE_FOLDER, LiveStore
from serving.models.common import parameters


def served_version(args: dict, gallery_model: str) -> Path:
    """The folder of the gallery version a model instance works on: its own version folder for
    gallery_search, the latest of `gallery_model`'s for the models beside it."""
    model = Path(args["model_repository"])
    if model.name == gallery_model:
        return model / args["model_version"]
    versions = [p for p in (model.parent / gallery_model).iterdir() if p.name.isdigit() and p.is_dir()]
    return max(versions, key=lambda p: int(p.name))


def global_index(params: dict, base_items: int) -> GlobalIndex:
    return GlobalIndex(base_items, int(params.get("index_offset") or 0), params.get("added_offset"))


def open_stores(args: dict, adder: bool) -> list[tuple[LiveStore, GlobalIndex]]:
    """gallery_ingest's and gallery_erase's stores: the served gallery's, or each local shard's."""
    params = parameters(args)
    opened = []
    for spec in json.loads(params["stores"]):
        store = LiveStore(served_version(args, spec["gallery_model"]) / LIVE_FOLDER, params["fingerprint"], adder)
        opened.append((store, global_index(spec, store.base_items)))
    return opened


def open_live(args: dict, **options):
    """gallery_search's LiveGallery (imported here: the other models never load torch)."""
    from serving.live_gallery import LiveGallery
    params = parameters(args)
    folder = served_version(args, params["gallery_model"])
    live = LiveGallery(folder / LIVE_FOLDER, folder / GALLERY_FILE, params["fingerprint"], **options)
    return live, global_index(params, len(live.base))


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
