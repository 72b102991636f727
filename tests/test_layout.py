"""The house's rules, checked from the source: every import points upstream along the stages,
no benchmark imports another, no file to scroll through.

    .venv/bin/python -m pytest -q tests/test_layout.py
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("kernels", "trainer", "export", "serving")  # upstream first: each may import those before it
MAX_LINES = 450
SKIP = {".git", ".venv", "tests", "results", "runs", "tbps.egg-info", "__pycache__"}


def _sources(suffixes=(".py",)) -> list[Path]:
    return sorted(p for p in ROOT.rglob("*") if p.is_file() and p.suffix in suffixes
                  and not SKIP & set(p.relative_to(ROOT).parts))


def _imported(path: Path) -> set[str]:
    """Absolute module names a file imports, also inside functions (the lazy imports count)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _is_script(path: Path) -> bool:
    return "__name__ == \"__main__\"" in path.read_text()


def stage_violations() -> list[str]:
    found = []
    for rank, stage in enumerate(STAGES):
        for path in sorted((ROOT / stage).rglob("*.py")):
            for name in _imported(path):
                top = name.split(".")[0]
                if top in STAGES and STAGES.index(top) > rank:
                    found.append(f"{path.relative_to(ROOT)} imports {name} (downstream of {stage})")
    return found


def test_every_import_points_upstream():
    assert stage_violations() == []


def test_no_benchmark_imports_another():
    bench = ROOT / "benchmarks"
    local = {p.stem: p for p in bench.glob("*.py")}
    found = [f"{p.name} imports {name}" for p in local.values() for name in _imported(p)
             if name.split(".")[0] in local and _is_script(local[name.split(".")[0]])]
    assert found == []


def test_no_file_to_scroll_through():
    long = {str(p.relative_to(ROOT)): n for p in _sources((".py", ".md", ".toml"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


@pytest.mark.parametrize("source, expected", [
    ("from serving.client import SearchClient\n", ["trainer/x.py imports serving.client (downstream of trainer)"]),
    ("def f():\n    import export.to_onnx\n", ["trainer/x.py imports export.to_onnx (downstream of trainer)"]),
    ("from kernels import set_scores\nfrom trainer.model import CLIP\nfrom . import y\n", []),
])
def test_the_stage_check_sees_lazy_and_module_imports(tmp_path, monkeypatch, source, expected):
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "x.py").write_text(source)
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert stage_violations() == expected
