"""A new gallery version goes live on a running server, with queries before, during and after."""
import threading
import time

import numpy as np
import pytest
import torch

from export.gallery import load_gallery, save_gallery
from serving.client import SearchClient
from serving.launch import TritonServer
from serving.live_store import GalleryReplaced, LiveStore
from serving.repository import gallery_versions, publish_gallery, write_repository
from trainer.data.formats import load_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def second_gallery(esa_run, synthetic_data, gallery, tmp_path_factory):
    """The test gallery without its first 3 images, plus every validation image."""
    from export.build_gallery import build_gallery
    folder = tmp_path_factory.mktemp("gallery-v2")
    val = load_gallery(build_gallery(esa_run, folder / "val.safetensors", data=synthetic_data, split="val",
                                     progress=False))
    old = load_gallery(gallery)
    return save_gallery(folder / "v2.safetensors", torch.cat([old.sets[3:], val.sets]),
                        torch.cat([old.ids[3:], val.ids]), old.paths[3:] + val.paths, old.fingerprint,
                        old.alpha, old.weight)


def test_gallery_swap_without_restart_loses_no_query(esa_export, gallery, second_gallery, synthetic_data,
                                                     tmp_path):
    repo = write_repository(esa_export, gallery, tmp_path / "repo")
    n_old, n_new = len(load_gallery(gallery)), len(load_gallery(second_gallery))
    sizes, failures, stop = [], [], threading.Event()
    with TritonServer(repo, explicit=True) as server:
        def query():
            with SearchClient(server.grpc_url) as client:
                while not stop.is_set():
                    try:
                        sizes.append(len(client.search("a man in a black jacket", k=1000)[0]))
                    except Exception as e:  # any failure fails the test below
                        failures.append(repr(e))
        workers = [threading.Thread(target=query) for _ in range(4)]
        for w in workers:
            w.start()
        time.sleep(1.0)
        assert publish_gallery(repo, second_gallery, server.grpc_url) == 2
        time.sleep(1.0)
        stop.set()
        for w in workers:
            w.join()
        with SearchClient(server.grpc_url) as client:
            after = client.search("a man in a black jacket", k=1000)[0]
            image = load_dataset(synthetic_data).train[0].path
            (added,) = client.ingest([image.read_bytes()], ["new/one.jpg"])  # ingest followed version 2
            assert added.index == n_new and client.search_images(image.read_bytes(), k=1)[0][0].path == "new/one.jpg"
        with pytest.raises(ValueError, match="has 1 live additions and 0 erasures"):
            publish_gallery(repo, gallery, server.grpc_url)  # they would be lost: compact first
    # an ingest still running on version 1 (its model instance is unloaded after the publish):
    # refused, not acknowledged into a gallery no longer served
    old = LiveStore(repo / "gallery_search" / "1" / "live", adder=True)
    with pytest.raises(GalleryReplaced):
        old.add(np.zeros((1, *load_gallery(gallery).sets.shape[1:]), np.float16), ["late/one.jpg"])
    old.close()
    assert not failures
    assert sizes[0] == n_old and sizes[-1] == n_new and set(sizes) == {n_old, n_new}
    assert {h.path for h in after} == set(load_gallery(second_gallery).paths)
    assert gallery_versions(repo) == [1, 2]


def test_a_server_without_model_control_is_told_and_nothing_is_left_staged(server, repository, gallery, tmp_path):
    """The session server runs without explicit model control, as a container started without it."""
    import shutil
    repo = shutil.copytree(repository, tmp_path / "repo")
    with pytest.raises(ValueError, match=r"did not load gallery version 2: .*explicit model control") as e:
        publish_gallery(repo, gallery, server.grpc_url)
    assert "\n" not in str(e.value)
    assert gallery_versions(repo) == [1]
    store = LiveStore(repo / "gallery_search" / "1" / "live")
    assert store.erase(paths=["never/was.jpg"]) == []  # still the served version: not sealed
    store.close()


def test_a_gallery_of_another_checkpoint_is_refused_before_anything_changes(esa_export, gallery, tmp_path):
    from export.gallery import GalleryError
    repo = write_repository(esa_export, gallery, tmp_path / "repo")
    g = load_gallery(gallery)
    other = save_gallery(tmp_path / "other.safetensors", g.sets, g.ids, g.paths, "0" * 16, g.alpha, g.weight)
    with pytest.raises(GalleryError, match="built by checkpoint 0000000000000000"):
        publish_gallery(repo, other, "127.0.0.1:1")  # refused before any server is contacted
    assert gallery_versions(repo) == [1]
