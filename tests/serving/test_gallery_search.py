"""gallery_search's start-up decisions, on CPU: which device an instance takes (KIND_GPU never
falls back to the CPU; cuda:N is made current), and the shapes it warms up at."""
import json
import sys

import pytest
import torch
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from tests.serving.conftest import MAX_BATCH


@pytest.fixture(scope="module")
def gallery_search():
    """The model module, importable outside Triton through the bundled backend's utils module."""
    from serving.launch import bundled_server
    sys.path.insert(0, str(bundled_server()[0].parent.parent / "backends" / "python"))
    from serving.models import gallery_search
    return gallery_search


def instance_args(repository, kind: str, device_id: int = 0) -> dict:
    """What Triton's python backend passes to initialize()."""
    config = (repository / "gallery_search" / "config.pbtxt").read_text()
    as_json = json_format.MessageToDict(text_format.Parse(config, mc.ModelConfig()), preserving_proto_field_name=True)
    return {"model_config": json.dumps(as_json), "model_instance_kind": kind,
            "model_instance_device_id": str(device_id), "model_repository": str(repository / "gallery_search"),
            "model_name": "gallery_search", "model_version": "1"}


def test_a_gpu_instance_without_cuda_refuses_to_start(gallery_search, repository):
    assert not torch.cuda.is_available()  # this machine: what a container whose torch cannot use the driver sees
    model = gallery_search.TritonPythonModel()
    with pytest.raises(RuntimeError, match="instance kind KIND_GPU but no usable CUDA device"):
        model.initialize(instance_args(repository, "GPU"))


def test_ready_means_every_kernel_it_serves_was_prepared(gallery_search, repository, monkeypatch):
    """The instance compiles its kernels once at start (kernels.prepare: every batch size up to
    max_batch_size, every k TOPK can carry, the set shape of its gallery); the CPU path has
    nothing to compile, so a CPU instance searches nothing at start."""
    calls, searched = [], []
    monkeypatch.setattr(gallery_search.kernels, "prepare", lambda *a, **kw: calls.append((a, kw)) or 0)
    monkeypatch.setattr(gallery_search.kernels, "search", lambda *a, **kw: searched.append(a))
    model = gallery_search.TritonPythonModel()
    model.initialize(instance_args(repository, "CPU"))
    assert model.device == torch.device("cpu") and model.live.column("sets").dtype == torch.float32
    rows, dim = model.live.set_shape
    assert calls == [((rows, rows, dim, torch.float32, torch.device("cpu"), MAX_BATCH, 2**31 - 1),
                      {"alpha": model.live.base.alpha, "weight": model.live.base.weight})]
    assert searched == []


def test_a_gpu_instance_takes_its_own_device(gallery_search, monkeypatch):
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert gallery_search.claim_device("GPU", 1) == torch.device("cuda", 1) and current == [1]
    with pytest.raises(RuntimeError, match="instance on GPU 2, but torch sees 2 CUDA device"):
        gallery_search.claim_device("GPU", 2)
    assert gallery_search.claim_device("CPU", 0) == torch.device("cpu") and current == [1]


def test_the_hits_columns_and_erasures_follow_the_live_gallery(gallery_search, repository, tmp_path):
    import shutil

    import numpy as np

    from export.gallery_meta import format_time
    from serving.live_gallery import LiveGallery
    shutil.copytree(repository / "gallery_search", tmp_path / "gallery_search")  # the served one stays as it is
    model = gallery_search.TritonPythonModel()
    model.initialize(instance_args(tmp_path, "CPU"))
    live = model.live
    writer = LiveGallery(live.folder, live.base_path)
    n = len(live)
    writer.add(live.column("sets")[:3].half(), ["new/a.jpg", "new/b.jpg", "new/c.jpg"], cameras=["cam-new", None, "cam-new"],
               times=["2026-12-02T06:00:00Z", None, "2026-12-02T06:00:00Z"])
    writer.erase(paths=live.paths([1]))
    live.refresh()
    assert not live.search(live.column("sets")[:2], n + 3)[1].eq(1).any()  # the erased item: never a hit
    index = np.array([[n + 2, 0, n + 1], [1, n, n + 2]])
    paths, cameras, times = model._strings(index)
    camera = live.column("camera")
    assert paths.tolist() == [[p.encode() for p in live.paths(row)] for row in index.tolist()]
    assert cameras.tolist() == [[(live.cameras[camera[j]] if camera[j] >= 0 else "").encode() for j in row]
                                for row in index.tolist()]
    assert times.tolist() == [[format_time(int(live.column("time")[j])).encode() for j in row] for row in index.tolist()]
    assert cameras[0, 0] == b"cam-new" and times[0, 0] == times[1, 2] != b"" and times[0, 2] == b""
    assert [a.shape for a in model._strings(np.zeros((2, 0), dtype=np.int64))] == [(2, 0)] * 3
    writer.close()


@pytest.mark.parametrize("missing", ["scan", "refuse"])
def test_a_segment_without_its_ann_index_is_scanned_or_refused_as_configured(gallery_search, esa_export, gallery,
                                                                             tmp_path, capsys, missing):
    """tbps repo --two-stage without tbps ann: every segment lacks its index. `scan` (the default)
    loads and says so in one line a segment; `refuse` does not load, naming the first."""
    from export.gallery import load_gallery
    from export.gallery_writer import install_gallery
    from serving.repository import write_repository
    copy = install_gallery(load_gallery(gallery), tmp_path / "gallery")
    repo = write_repository(esa_export, copy, tmp_path / "repo", max_batch_size=MAX_BATCH, two_stage=3,
                            ann_missing=missing)
    model = gallery_search.TritonPythonModel()
    if missing == "refuse":
        with pytest.raises(RuntimeError, match=r"1 segment\(s\) without a usable ANN index .*--ann-missing refuse.*"
                                               r"no ANN index \(tbps ann GALLERY writes one\)"):
            model.initialize(instance_args(repo, "CPU"))
        return
    model.initialize(instance_args(repo, "CPU"))
    assert "no ANN index (tbps ann GALLERY writes one): this segment is searched exactly" in capsys.readouterr().out
    model.live.close()
    with pytest.raises(ValueError, match="ann_missing must be one of scan, refuse, got 'ignore'"):
        write_repository(esa_export, copy, tmp_path / "other", two_stage=3, ann_missing="ignore")
