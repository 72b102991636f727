"""Repository layout and configs for both profiles (no server needed)."""
import pytest

from export.gallery import GalleryError, load_gallery, save_gallery
from serving.repository import write_repository


def test_portable_profile_runs_everything_in_the_python_backend(repository):
    models = sorted(p.name for p in repository.iterdir())
    assert models == ["gallery_search", "image_encoder", "person_search", "text_encoder", "tokenizer"]
    for name in ("tokenizer", "text_encoder", "image_encoder", "gallery_search"):
        assert 'backend: "python"' in (repository / name / "config.pbtxt").read_text()
        assert "import TritonPythonModel" in (repository / name / "1" / "model.py").read_text()
    assert (repository / "text_encoder" / "1" / "model.onnx").is_file()
    ensemble = (repository / "person_search" / "config.pbtxt").read_text()
    assert 'platform: "ensemble"' in ensemble and ensemble.count("model_name:") == 3


def test_production_profile_uses_triton_backends(esa_export, gallery, tmp_path):
    repo = write_repository(esa_export, gallery, tmp_path / "onnx", profile="production")
    text = (repo / "text_encoder" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in text and "KIND_GPU" in text and "dynamic_batching" in text
    assert (repo / "text_encoder" / "1" / "model.onnx").is_file()
    assert "KIND_GPU" in (repo / "gallery_search" / "config.pbtxt").read_text()
    engines = tmp_path / "engines"
    engines.mkdir()
    for name in ("text_encoder", "image_encoder"):
        (engines / f"{name}.plan").write_bytes(b"plan")
    repo = write_repository(esa_export, gallery, tmp_path / "trt", profile="production", engines=engines)
    assert 'platform: "tensorrt_plan"' in (repo / "image_encoder" / "config.pbtxt").read_text()
    assert (repo / "image_encoder" / "1" / "model.plan").read_bytes() == b"plan"


def test_bad_profile_used_folder_and_foreign_gallery_are_refused(esa_export, gallery, tmp_path):
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        write_repository(esa_export, gallery, tmp_path / "a", profile="fast")
    g = load_gallery(gallery)
    other = save_gallery(tmp_path / "other.safetensors", g.sets, g.ids, g.paths, "f" * 16, g.alpha, g.weight)
    with pytest.raises(GalleryError, match="rebuild the gallery"):
        write_repository(esa_export, other, tmp_path / "b")
    assert not (tmp_path / "b").exists()  # nothing half-written
