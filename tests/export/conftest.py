"""Export fixtures: a checkpoint per method and their ONNX exports, built once per session."""
import pytest
import torch

from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.heads import METHODS
from trainer.retriever import build_retriever


@pytest.fixture(scope="session")
def method_checkpoints(tiny_run, tmp_path_factory):
    """method -> checkpoint directory: the trained tiny run for its own method, random tiny
    weights (same architecture and tokenizer) for every other method, present and future."""
    trained = load_checkpoint(tiny_run)
    paths = {trained.config["method"]: trained.path}
    root = tmp_path_factory.mktemp("methods")
    for method in METHODS:
        if method not in paths:
            torch.manual_seed(0)
            model = build_retriever(dict(trained.config, method=method, method_args={}))
            paths[method] = save_checkpoint(root / method, model, trained.tokenizer)
    return paths


@pytest.fixture(scope="session")
def exported(method_checkpoints, tmp_path_factory):
    """exported(method, fp16=False) -> the directory of that checkpoint's ONNX export (cached)."""
    from export.to_onnx import export_onnx
    cache = {}

    def get(method: str, fp16: bool = False):
        if (method, fp16) not in cache:
            out = tmp_path_factory.mktemp(f"onnx-{method}-{'fp16' if fp16 else 'fp32'}")
            cache[(method, fp16)] = export_onnx(method_checkpoints[method], out, fp16=fp16).parent
        return cache[(method, fp16)]
    return get
