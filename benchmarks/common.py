"""What every benchmark does the same way: timing, the machine record, the result files, the plots.

A library module of benchmarks/ (never run): the scripts beside it import it as `common` (a
script's own folder leads sys.path). Only the standard library and numpy load with it, so that
run_all.py stays light, gpu_check.py can set TRITON_INTERPRET before torch loads, and
bench_serving.py its OMP_WAIT_POLICY: torch and matplotlib are imported where they are used.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------------------------ timing
def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of `repeats` calls of `fn` (which must block until its result is ready),
    after one untimed call (warm-up: caches, lazy initialisation, compilation)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def percentiles_ms(seconds: list[float], qs=(50, 95, 99)) -> dict[str, float]:
    """{"p50_ms": ..., ...} of latencies given in seconds (linear interpolation between samples)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {f"p{q}_ms": float(np.quantile(ms, q / 100)) for q in qs}


# ------------------------------------------------------------------------------------------------ the machine
def _threads() -> int:
    import torch
    return torch.get_num_threads()


def _torch_version() -> str:
    import torch
    return torch.__version__


# Each field under the name the committed results use (some say "cores" or "cpu" for the same thing).
# platform.processor() is empty on most Linux machines: the architecture stands in.
_FIELDS: dict[str, Callable[[], object]] = {
    "machine": platform.node,
    "processor": lambda: platform.processor() or platform.machine(),
    "cpu": lambda: platform.processor() or platform.machine(),
    "threads": _threads,
    "cores": _threads,
    "torch": _torch_version,
    "python": platform.python_version,
    "date": lambda: time.strftime("%Y-%m-%d"),
    "started_utc": lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
}


def machine_record(*fields: str) -> dict:
    """The named fields of the machine record, in the order given (the order of the JSON's keys)."""
    return {name: _FIELDS[name]() for name in fields}


# ------------------------------------------------------------------------------------------------ result files
def result_stem(name: str, quick: bool = False, folder: Path | None = None) -> Path:
    """folder/name, or folder/name_quick: a quick run never overwrites the full results.
    `folder` defaults to RESULTS as it is at the call (a test may point it elsewhere)."""
    return Path(folder or RESULTS) / f"{name}{'_quick' if quick else ''}"


def write_json(path: Path, data, indent: int = 2) -> Path:
    """`data` as JSON, written atomically (a run killed mid-write leaves the previous file whole)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent, default=str) + "\n")
    os.replace(tmp, path)
    return path


def write_result(stem: Path, data: dict) -> Path:
    """stem.json (a device name in the stem may hold dots: the suffix is appended, not substituted)."""
    return write_json(Path(f"{stem}.json"), data)


# ------------------------------------------------------------------------------------------------ plots
def pyplot():
    """matplotlib.pyplot on the Agg backend: the benchmarks run headless."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def grouped_bars(ax, groups: list[str], series: dict[str, list], errors: dict[str, list] | None = None,
                 width: float | None = None, tick_fontsize: float | None = None) -> None:
    """One bar per (group, series), each group's bars side by side around its tick; `errors`: error bars."""
    x = np.arange(len(groups))
    width = width or 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        extra = {"yerr": errors[label], "capsize": 2} if errors else {}
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label, **extra)
    ax.set_xticks(x, groups, **({"fontsize": tick_fontsize} if tick_fontsize else {}))


def save_plot(fig, stem: Path, dpi: int = 120) -> Path:
    """stem.png, laid out tight; the figure is closed (a benchmark may draw several)."""
    path = Path(f"{stem}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


# ------------------------------------------------------------------------------------------------ summaries
def mean_std(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per key of the rows (all with the same keys): mean and population standard deviation."""
    return {k: {"mean": float(np.mean([r[k] for r in rows])), "std": float(np.std([r[k] for r in rows]))}
            for k in rows[0]}
