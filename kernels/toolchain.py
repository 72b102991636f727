"""Can this machine build what Triton builds at a GPU's first kernel launch? Triton compiles its
kernel launcher, a small C extension, with the system's C compiler against Python's headers; an
image without them fails only when gallery_search starts on a GPU. This check needs no GPU, so
`docker build` runs it (python3 -m kernels.toolchain) and fails there instead.
"""
from __future__ import annotations

import subprocess
import sys

# a module of the same kind as Triton's launcher: Python.h, a shared object, imported
PROBE = """#include <Python.h>
static struct PyModuleDef probe = {PyModuleDef_HEAD_INIT, "tbps_launcher_probe", NULL, -1, NULL};
PyMODINIT_FUNC PyInit_tbps_launcher_probe(void) { return PyModule_Create(&probe); }
"""


def check_launcher_build() -> None:
    """Builds and imports PROBE through Triton's own build path (its compiler lookup: CC, else gcc or
    clang; its include paths); RuntimeError naming what is missing otherwise."""
    from triton.runtime.build import compile_module_from_src
    try:
        compile_module_from_src(PROBE, "tbps_launcher_probe")
    except (RuntimeError, OSError, subprocess.CalledProcessError, ImportError) as e:
        raise RuntimeError(f"Triton cannot build its kernel launcher here ({type(e).__name__}: {e}): it needs a C "
                           f"compiler (gcc or clang, or CC) and Python's headers (Python.h, e.g. python3-dev)") from e


def main() -> int:
    try:
        check_launcher_build()
    except RuntimeError as e:
        print(f"tbps: {e}", file=sys.stderr)
        return 1
    import triton
    print(f"triton {triton.__version__}: the kernel launcher builds here")
    return 0


if __name__ == "__main__":
    sys.exit(main())
