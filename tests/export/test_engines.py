"""The engine record (export/engines.py): a folder passes check_engines only with its record, both
plans present and non-empty, the checkpoint's fingerprint and the container's exact TensorRT."""
import json
import re

import pytest

from export.engines import CONTAINER, CONTAINER_TRT, RECORD, check_engines, write_record

FINGERPRINT = "0123456789abcdef"


def record(**changes) -> dict:
    base = {"fingerprint": FINGERPRINT, "precision": "fp16", "tensorrt": CONTAINER_TRT,
            "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
            "models": {"text_encoder": {"plan": "text_encoder.plan", "min_batch": 1, "opt_batch": 8, "max_batch": 32},
                       "image_encoder": {"plan": "image_encoder.plan", "min_batch": 1, "opt_batch": 32,
                                         "max_batch": 32}},
            "parity": {"text_encoder": 0.9995, "image_encoder": 0.9996}}
    return dict(base, **changes)


@pytest.fixture
def folder(tmp_path):
    """An engine folder as to_trt.py installs it (the plans' bytes do not matter here)."""
    for name in ("text_encoder", "image_encoder"):
        (tmp_path / f"{name}.plan").write_bytes(b"engine bytes")
    write_record(tmp_path, record())
    return tmp_path


def test_a_complete_build_passes_and_returns_its_record(folder):
    got = check_engines(folder, FINGERPRINT)
    assert got == dict(record(), format="tbps-trt-engines", version=1)
    assert got["models"]["text_encoder"] == {"plan": "text_encoder.plan", "min_batch": 1, "opt_batch": 8,
                                             "max_batch": 32}
    assert sorted(p.name for p in folder.iterdir()) == ["engines.json", "image_encoder.plan", "text_encoder.plan"]
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", CONTAINER_TRT)  # the full version: a plan needs exactly it


def test_dummy_plans_without_a_record_are_refused(folder):
    """Fault 8: plan files alone (anything named .plan) are not engines of this checkpoint."""
    (folder / RECORD).unlink()
    with pytest.raises(ValueError, match=rf"^no {RECORD} in {folder}: not a checked engine build "
                                         rf"\(build one with: tbps trt CKPT --out {folder}\)$"):
        check_engines(folder, FINGERPRINT)


@pytest.mark.parametrize("fault, message", [
    ("another checkpoint", "engines built from checkpoint ffffffffffffffff, expected checkpoint 0123456789abcdef"),
    ("TensorRT 11", rf"engines built by TensorRT 11.1.0.6 do not load in the Triton {CONTAINER} container, whose "
                    rf"TensorRT is {CONTAINER_TRT} \(a plan loads only under the exact TensorRT that built it: "
                    rf"pip install -e '.\[trt\]' and rebuild\)$"),
    ("plan missing", "image_encoder engine .*image_encoder.plan is missing"),
    ("plan empty", "text_encoder engine .*text_encoder.plan is empty"),
    ("field missing", r"missing field\(s\) \['tensorrt', 'models.text_encoder.max_batch'\]"),
    ("not JSON", "invalid JSON"),
])
def test_each_mismatch_is_one_clear_line(folder, fault, message):
    if fault == "another checkpoint":
        write_record(folder, record(fingerprint="ffffffffffffffff"))
    elif fault == "TensorRT 11":
        write_record(folder, record(tensorrt="11.1.0.6"))
    elif fault == "plan missing":
        (folder / "image_encoder.plan").unlink()
    elif fault == "plan empty":
        (folder / "text_encoder.plan").write_bytes(b"")
    elif fault == "field missing":
        broken = record()
        del broken["tensorrt"], broken["models"]["text_encoder"]["max_batch"]
        write_record(folder, broken)
    else:
        (folder / RECORD).write_text('{"fingerprint": ')
    with pytest.raises(ValueError, match=message) as error:
        check_engines(folder, FINGERPRINT)
    assert "\n" not in str(error.value) and str(error.value).startswith(str(folder))


@pytest.mark.parametrize("built_by", ["10.13.0.35", "10.8.0.40", "10.8.0", "10.8.0.43.1"])
def test_only_the_containers_exact_tensorrt_passes(folder, built_by):
    """Issue 25 fault 6: a plan deserializes only under the TensorRT that built it, to the patch:
    engines of 10.13 (or of another 10.8 patch) pass a major-version check and then fail to load in
    the container."""
    write_record(folder, record(tensorrt=built_by))
    with pytest.raises(ValueError, match=rf"engines built by TensorRT {re.escape(built_by)} do not load in the "
                                         rf"Triton {CONTAINER} container, whose TensorRT is {CONTAINER_TRT} "):
        check_engines(folder, FINGERPRINT)
    write_record(folder, record(tensorrt=CONTAINER_TRT))
    assert check_engines(folder, FINGERPRINT)["tensorrt"] == CONTAINER_TRT


def test_write_record_is_atomic(folder):
    write_record(folder, record(precision="fp32"))
    assert json.loads((folder / RECORD).read_text())["precision"] == "fp32"
    assert not list(folder.glob("*.tmp"))
