"""A gallery sharded over 3 servers answers exactly what one server holding it all answers."""
import contextlib

import pytest

from serving.client import SearchClient
from serving.launch import TritonServer
from serving.shards import split_gallery, write_shard_repositories
from tests.serving.conftest import MAX_BATCH

pytestmark = pytest.mark.slow


def test_three_shards_equal_one_server(server, esa_export, gallery, captions, tmp_path):
    # one request of MAX_BATCH texts: the CPU search of a 4-query remainder batch can differ from
    # one over a gallery slice in the last bit (reported to the kernels' owner)
    captions = captions[:MAX_BATCH]
    repos = write_shard_repositories(esa_export, gallery, 3, tmp_path, max_batch_size=MAX_BATCH)
    with contextlib.ExitStack() as stack:
        shards = [stack.enter_context(TritonServer(r)) for r in repos]
        with SearchClient([s.grpc_url for s in shards]) as sharded, SearchClient(server.grpc_url) as single:
            for k in (1, 5, 1000):
                assert sharded.search(captions, k=k) == single.search(captions, k=k)


def test_split_covers_the_gallery_once(gallery, tmp_path):
    from export.gallery import load_gallery
    parts = split_gallery(gallery, 3, tmp_path)
    loaded = [load_gallery(p) for p, _ in parts]
    assert [offset for _, offset in parts] == [0, len(loaded[0]), len(loaded[0]) + len(loaded[1])]
    assert sum((g.paths for g in loaded), []) == load_gallery(gallery).paths
    with pytest.raises(ValueError, match="cannot split a gallery"):
        split_gallery(gallery, 10_000, tmp_path)
