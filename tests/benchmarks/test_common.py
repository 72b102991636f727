"""benchmarks/common.py: the timer's warm-up, the results' names and files, the machine record, the plots."""
import json

import pytest

import common


def test_median_seconds_warms_up_once_and_times_each_repeat():
    calls = []
    assert common.median_seconds(lambda: calls.append(1), 5) >= 0
    assert len(calls) == 6


def test_percentiles_interpolate_between_samples():
    assert common.percentiles_ms([0.001, 0.002, 0.003], qs=(50, 100)) == pytest.approx({"p50_ms": 2.0, "p100_ms": 3.0})


def test_quick_runs_get_their_own_files(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    assert common.result_stem("search_cpu") == tmp_path / "search_cpu"
    assert common.result_stem("search_cpu", quick=True) == tmp_path / "search_cpu_quick"
    assert common.result_stem("methods", folder=tmp_path / "x") == tmp_path / "x" / "methods"


def test_write_result_appends_the_suffix_and_leaves_no_temporary(tmp_path):
    stem = tmp_path / "sub" / "search_gpu_NVIDIA_H200_v1.5"  # a dot in a device name is not a suffix
    path = common.write_result(stem, {"rows": [1], "path": tmp_path})
    assert path.name == "search_gpu_NVIDIA_H200_v1.5.json"
    assert json.loads(path.read_text()) == {"rows": [1], "path": str(tmp_path)}
    assert path.read_text().endswith("}\n") and [p.name for p in path.parent.iterdir()] == [path.name]


def test_machine_record_keeps_the_names_and_order_asked_for():
    record = common.machine_record("machine", "cores", "processor", "date")
    assert list(record) == ["machine", "cores", "processor", "date"]
    assert record["cores"] >= 1 and record["processor"]


def test_mean_std_per_key():
    assert common.mean_std([{"R1": 1.0, "mAP": 2.0}, {"R1": 3.0, "mAP": 2.0}]) == \
        {"R1": {"mean": 2.0, "std": 1.0}, "mAP": {"mean": 2.0, "std": 0.0}}


def test_grouped_bars_saved_as_png(tmp_path):
    fig, ax = common.pyplot().subplots()
    common.grouped_bars(ax, ["R1", "mAP"], {"a": [1, 2], "b": [3, 4]}, errors={"a": [0.1, 0.1], "b": [0.2, 0.2]})
    assert len(ax.patches) == 4 and [t.get_text() for t in ax.get_xticklabels()] == ["R1", "mAP"]
    assert common.save_plot(fig, tmp_path / "plot").stat().st_size > 1000
