"""The GPU deployment as written: the Dockerfile, the `trt` / `gpu` extras and the README's GPU
commands agree with export/engines.py's target container and with what to_trt.py writes."""
import re
import shlex
import tomllib
from itertools import combinations
from pathlib import Path

from export.engines import CONTAINER, CONTAINER_TRT
from export.to_trt import default_out_dir

ROOT = Path(__file__).resolve().parents[2]


def extras() -> dict[str, set[str]]:
    """Extra -> the distribution names it installs, its own `tbps[...]` extras expanded."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def names(extra: str) -> set[str]:
        out = set()
        for requirement in declared[extra]:
            name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()
            inner = re.match(r"tbps\[(.+)\]", requirement)
            out |= set().union(*(names(e) for e in inner.group(1).split(","))) if inner else {name}
        return out
    return {extra: names(extra) for extra in declared}


def gpu_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("### On a GPU: TensorRT and the official Triton container", 1)[1].split("\n## ", 1)[0]


def commands(section: str) -> list[list[str]]:
    """The shell commands of the section's first code block, continuation lines joined, comments dropped."""
    block = section.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_the_image_is_the_pinned_release_with_a_torch_for_its_cuda():
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")  # continuation lines joined
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[0] == f"FROM nvcr.io/nvidia/tritonserver:{CONTAINER}-py3"
    runs = [line for line in lines if line.startswith("RUN ")]
    assert "--index-url https://download.pytorch.org/whl/cu128" in runs[0] and "torch==" in runs[0]
    assert "pip install . " in runs[1] and "-e" not in runs[1].split()  # installed, not linked to a mount
    assert '--no-deps "triton==${TRITON_VERSION}"' in runs[1] and runs[1].endswith("python3 -m kernels.toolchain")


def test_the_trt_extra_pins_the_containers_tensorrt():
    """Fault 1: a bare `tensorrt>=10` resolves to TensorRT 11, whose engines the container cannot load;
    issue 25 fault 6: so does any other 10.x (a plan loads only under the exact TensorRT that built it),
    so the pin is export/engines.py's CONTAINER_TRT, to the patch."""
    (pin,) = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["trt"]
    name, version = pin.split("==")
    assert name in ("tensorrt", "tensorrt-cu12") and version == CONTAINER_TRT


def test_no_two_extras_install_onnxruntime_beside_onnxruntime_gpu():
    """Fault 9: both distributions write the `onnxruntime` module; installed together they break."""
    found = extras()
    for a, b in combinations(found, 2):
        assert not {"onnxruntime", "onnxruntime-gpu"} <= found[a] | found[b], (a, b)
    assert "triton" in found["gpu"]


def test_the_readme_gpu_commands_chain_into_each_other():
    section = gpu_section()
    steps = commands(section)
    to_trt = next(c for c in steps if c[0].endswith("tbps") and c[1] == "trt")  # export/to_trt.py's own arguments
    checkpoint = to_trt[2]
    repo = next(c for c in steps if c[0].endswith("tbps") and c[1] == "repo")
    engines, out = repo[repo.index("--engines") + 1], repo[repo.index("--out") + 1]
    assert default_out_dir(checkpoint, fp16="--fp16" in to_trt) == Path(engines)  # fault 3
    assert "--out" not in to_trt and "--max-batch" not in repo and repo[repo.index("--profile") + 1] == "production"
    build = next(c for c in steps if c[:2] == ["docker", "build"])
    run = next(c for c in steps if c[:2] == ["docker", "run"])
    tag = build[build.index("-t") + 1]
    server = run[run.index(tag) + 1:]
    mount = run[run.index("-v") + 1].split(":")
    assert mount[0] == f"$PWD/{out}" and server[0] == "tritonserver"
    assert server[server.index("--model-repository") + 1] == mount[1]
    assert server[server.index("--model-control-mode") + 1] == "explicit"  # fault 9: live gallery swaps
    assert server[server.index("--load-model") + 1] == "*"
    assert "--gpus" in run and any(a.startswith("--shm-size=") for a in run)
    published = [run[i + 1] for i, a in enumerate(run) if a == "-p"]
    assert published and all(p.startswith("127.0.0.1:") for p in published)
    search = next(c for c in steps if c[0].endswith("tbps") and c[1] == "search")
    grpc = search[search.index("--url") + 1]
    assert f"{grpc}:{grpc.rsplit(':', 1)[1]}" in published
    assert not any("pip" in a for a in run)  # fault 9: nothing is installed at each start
    assert f"Triton {CONTAINER}" in section
