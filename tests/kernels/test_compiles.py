"""How many kernel variants a server compiles, counted the way Triton's JIT keys its cache on a
GPU: the sm_90 argument binder's specialisation (dtypes, 16-byte alignment and divisibility of
every argument not in do_not_specialize, the constexprs) plus the options (warps, stages).
Launches are recorded, not run, so the count covers batches, k values and gallery sizes that
the interpreter could never run here.

At 8b2c390 the warm-up left variants uncompiled that served queries then compiled after READY:
any query without a margin (image sets, LIKE), and every kernel once an ingest made N odd
(N was specialised); the autotuner also compiled up to five configs per key."""
import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
search_triton = pytest.importorskip("kernels.search_triton", reason="triton is not installed")
KQ = KG = 5
D = 32  # not a multiple of the configs' BD: the unaligned variant, as any small test config
MAX_BATCH, MAX_K = 64, 100


def _counter(monkeypatch):
    """benchmarks/bench_compiles.py's JitCounter (loaded by path: benchmarks/ is not a package) on the
    current kernels: the sm_90 JIT cache key of every launch, nothing run."""
    spec = importlib.util.spec_from_file_location("bench_compiles", ROOT / "benchmarks" / "bench_compiles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.JitCounter(search_triton, patch=monkeypatch.setattr)


def _unit(n, k, dtype=torch.float16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, k, D, generator=gen), dim=-1).to(dtype)


def _serve(n, batches, ks, dtype=torch.float16):
    """Queries a gallery_search instance serves after READY on a gallery of n items (contiguous,
    as the live store holds it; never read, the launches are only recorded): text (a margin)
    and image/LIKE sets (none), filtered or not; int8: an 8-bit gallery, with its row scales."""
    g, margin, allowed = torch.empty(n, KG, D, dtype=dtype), torch.zeros(n), torch.ones(n, dtype=torch.bool)
    scale = torch.empty(n, KG) if dtype == torch.int8 else None
    for nq in batches:
        q = _unit(nq, KQ, seed=nq)
        for k in ks:
            for m in (margin, None):
                for a in (None, allowed):
                    search_triton.search(q, g, k, 16.0, 1.0, m, "chamfer", a, scale)


@pytest.mark.parametrize("dtype", [torch.float16, torch.int8])
def test_prepare_compiles_every_variant_served_and_nothing_compiles_after(monkeypatch, dtype):
    counter = _counter(monkeypatch)
    made = search_triton.prepare(KQ, KG, D, dtype, torch.device("cpu"), MAX_BATCH, MAX_K,
                                 16.0, 1.0, "chamfer")
    at_start = set(counter.keys)
    # 4 query-block sizes x (2 top-k buckets x filtered or not x 2 passes + the dense path's 2 passes)
    assert made == 4 * 3 * 2 and len(at_start) == 4 * (2 * 2 * 2 + 2)
    _serve(1000, range(1, MAX_BATCH + 1), (1, 2, 10, 16, 17, 64, 65, MAX_K), dtype)  # every batch size and k
    _serve(1001, (1, 5, 64), (10, 64, MAX_K), dtype)  # one ingest later: N no longer a multiple of 16
    for n in (1_000_001, 4_999_999):  # a gallery grown by ingest
        _serve(n, (1, 64), (10, 64), dtype)
    _serve(1_048_577, (64,), (MAX_K,), dtype)  # k > 64 in two gallery chunks: the second starts at 2**20
    assert counter.keys == at_start, f"compiled after READY: {sorted(counter.keys - at_start)[:2]}"


def test_a_new_shape_is_a_new_variant(monkeypatch):
    """The counter sees what the JIT sees: another dtype or set size is another compile."""
    counter = _counter(monkeypatch)
    g = _unit(100, KG)
    search_triton.search(_unit(1, KQ), g, 10, 16.0, 1.0, None, "chamfer")
    one = len(counter.keys)
    search_triton.search(_unit(1, KQ), g.to(torch.bfloat16), 10, 16.0, 1.0, None, "chamfer")
    assert one == 2 and len(counter.keys) == 4  # fixed-shift pass + guarded rerun, per dtype


def test_launches_are_made_under_the_tensors_device(monkeypatch):
    """Triton launches on the current CUDA device: _launch enters the gallery's device first."""
    entered, real_guard = [], search_triton.device_guard
    monkeypatch.setattr(search_triton, "device_guard", lambda device: entered.append(device) or _Null())
    _counter(monkeypatch)
    g = _unit(100, KG)
    search_triton.search(_unit(1, KQ), g, 10, 16.0, 1.0, None, "chamfer")
    search_triton.scores(_unit(1, KQ), g, 16.0, 1.0, None, "chamfer")
    assert entered == [g.device, g.device]
    guard = real_guard(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_prepare_on_the_cpu_compiles_nothing():
    import kernels
    assert kernels.prepare(KQ, KG, D, torch.float32, "cpu", MAX_BATCH, MAX_K) == 0


@pytest.mark.parametrize("nq,kq,kg,k,weight,filtered", [(1, 5, 5, 10, 1.0, False), (64, 5, 5, 64, 1.0, True),
                                                        (3, 4, 3, 100, 1.0, False), (9, 5, 5, 1, 0.0, True),
                                                        (2, 5, 5, None, 1.0, False)])
def test_variants_are_the_launches_a_search_makes(monkeypatch, nq, kq, kg, k, weight, filtered):
    """variants() is what gpu_check plans its compiles with: it must name exactly what runs."""
    counter = _counter(monkeypatch)
    q, g = _unit(nq, kq), _unit(200, kg)
    allowed = torch.ones(200, dtype=torch.bool) if filtered else None
    if k is None:
        search_triton.scores(q, g, 16.0, weight, None, "chamfer")
    else:
        search_triton.search(q, g, k, 16.0, weight, None, "chamfer", allowed)
    planned = search_triton.variants(nq, kq, kg, D, torch.float16, k, 16.0, weight, "chamfer", filtered)
    assert len(planned) == len(counter.keys) > 0
