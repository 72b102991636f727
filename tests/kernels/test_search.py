"""kernels.search / set_scores against the reference, on every backend this machine has.

Backends: "cpu" (blocked torch, what the dispatcher runs for CPU tensors), "triton" (the
Triton kernels: compiled on CUDA tensors when a GPU is present, else through the
interpreter on CPU tensors (conftest.py), small sizes: it is slow).
"""
import os
import zlib

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import search_cpu, topk
from kernels.set_similarity import set_similarity_reference

CUDA = torch.cuda.is_available()

DEVICE = "cuda" if CUDA else "cpu"
BACKENDS = ["cpu", "triton"]
# the interpreter evaluates masked-out lanes too (log2 of an all-padding row's zero sum)
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")


def triton_module():
    if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU, and triton was imported before TRITON_INTERPRET could be set")
    return pytest.importorskip("kernels.search_triton", reason="triton is not installed")


def backend(name):
    """(search, scores, device) of a backend."""
    if name == "cpu":
        return search_cpu.search, search_cpu.scores, "cpu"
    mod = triton_module()
    return mod.search, mod.scores, DEVICE


def unit_sets(n, k, d, dtype=torch.float32, gen=None):
    return F.normalize(torch.randn(n, k, d, generator=gen), dim=-1).to(dtype)


def check_topk(scores, indices, reference, k, atol):
    """Sorted, tie-broken by index, and equal to the reference's top-k up to near-ties: each
    returned index's reference score is the returned score, and the scores are the top-k's."""
    n = reference.shape[1]
    assert scores.shape == indices.shape == (reference.shape[0], min(k, n))
    scores, indices, reference = scores.cpu().double(), indices.cpu(), reference.double()
    expected = reference.sort(dim=1, descending=True, stable=True)
    assert torch.allclose(scores, expected.values[:, :min(k, n)], atol=atol)
    assert torch.allclose(reference.gather(1, indices), scores, atol=atol)
    assert all(len(set(row.tolist())) == row.numel() for row in indices)
    assert (scores[:, 1:] <= scores[:, :-1] + atol).all()


SHAPES = [  # (Q, N, Kq, Kg, D): sizes that are multiples of no block
    (3, 37, 5, 5, 24),
    (1, 100, 1, 1, 8),  # K = 1: plain cosine
    (5, 70, 4, 3, 40),  # Kq != Kg, not powers of two
    (2, 19, 2, 6, 16),
    (33, 45, 5, 5, 24),  # 64 query columns: several query blocks of 8 sets
]


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode,alpha", [("chamfer", 16.0), ("chamfer", 64.0), ("maxsim", 16.0)])
def test_matches_reference(name, shape, mode, alpha):
    search, scores, device = backend(name)
    nq, n, kq, kg, d = shape
    gen = torch.Generator().manual_seed(zlib.crc32(repr((shape, mode, alpha)).encode()))  # replays: no salted hash()
    q, g, margin = unit_sets(nq, kq, d, gen=gen), unit_sets(n, kg, d, gen=gen), 0.2 * torch.rand(n, generator=gen)
    reference = set_similarity_reference(q.double(), g.double(), alpha=alpha, margin=margin.double(), mode=mode)
    dense = scores(q.to(device), g.to(device), alpha, 1.0, margin.to(device), mode)
    assert torch.allclose(dense.cpu().double(), reference, atol=1e-5)
    for k in (1, 10, n + 5):  # k > N returns N results
        found = search(q.to(device), g.to(device), k, alpha, 1.0, margin.to(device), mode)
        check_topk(*found, reference, k, atol=1e-5)


@pytest.mark.parametrize("name", BACKENDS)
def test_large_k_takes_the_chunked_path_and_weight_zero_is_global_cosine(name):
    search, _, device = backend(name)
    gen = torch.Generator().manual_seed(1)
    q, g = unit_sets(2, 3, 16, gen=gen), unit_sets(150, 3, 16, gen=gen)
    reference = q[:, 0] @ g[:, 0].T
    check_topk(*search(q.to(device), g.to(device), 100, 16.0, 0.0, None, "chamfer"), reference, 100, atol=1e-5)


@pytest.mark.parametrize("name", BACKENDS)
def test_fp16_gallery(name):
    search, scores, device = backend(name)
    gen = torch.Generator().manual_seed(2)
    q, g = unit_sets(4, 5, 64, torch.float16, gen=gen), unit_sets(90, 5, 64, torch.float16, gen=gen)
    reference = set_similarity_reference(q.double(), g.double())  # exact products of the fp16 values
    assert torch.allclose(scores(q.to(device), g.to(device), 16.0, 1.0, None, "chamfer").cpu().double(),
                          reference, atol=1e-4)
    check_topk(*search(q.to(device), g.to(device), 7, 16.0, 1.0, None, "chamfer"), reference, 7, atol=1e-4)


def test_bf16_gallery_on_the_cpu_path():
    """(The interpreter cannot run bf16: numpy has no bfloat16; the GPU test covers the kernel.)"""
    gen = torch.Generator().manual_seed(3)
    q, g = unit_sets(3, 5, 32, gen=gen), unit_sets(40, 5, 32, torch.bfloat16, gen=gen)
    reference = set_similarity_reference(q.bfloat16().double(), g.double())
    check_topk(*kernels.search(q, g, 5), reference, 5, atol=1e-4)  # queries cast to the gallery's dtype


def exact_sets(n, k, d, gen):
    """Unit rows with four entries of +-0.5: every cosine is a multiple of 1/4, exact in any
    summation order, so duplicated rows score bit-identically on every backend (numpy's GEMM
    under the interpreter rounds identical rows differently at different positions)."""
    rows = torch.zeros(n * k, d)
    cols = torch.stack([torch.randperm(d, generator=gen)[:4] for _ in range(n * k)])
    signs = torch.randint(0, 2, (n * k, 4), generator=gen) * 2 - 1
    return rows.scatter_(1, cols, 0.5 * signs.float()).view(n, k, d)


@pytest.mark.parametrize("name", BACKENDS)
def test_ties_go_to_the_lower_gallery_index(name):
    search, _, device = backend(name)
    gen = torch.Generator().manual_seed(4)
    base = exact_sets(12, 4, 16, gen)
    g = torch.cat([base, base, base[3:9]])  # every row of base appears two or three times
    q = exact_sets(3, 4, 16, gen)
    reference = set_similarity_reference(q, g)
    expected = reference.sort(dim=1, descending=True, stable=True).indices
    for k in (1, 9, 30):  # k = 1: an item tied with the first but of higher index stays out
        assert torch.equal(search(q.to(device), g.to(device), k, 16.0, 1.0, None, "chamfer")[1].cpu(),
                           expected[:, :k])


@pytest.mark.parametrize("name", BACKENDS)
def test_empty_gallery_and_no_queries(name):
    search, scores, device = backend(name)
    q, g = unit_sets(3, 2, 8).to(device), unit_sets(5, 2, 8).to(device)
    s, i = search(q, g[:0], 4, 16.0, 1.0, None, "chamfer")
    assert s.shape == i.shape == (3, 0) and i.dtype == torch.int64
    s, i = search(q[:0], g, 4, 16.0, 1.0, None, "chamfer")
    assert s.shape == i.shape == (0, 4)
    assert scores(q, g[:0], 16.0, 1.0, None, "chamfer").shape == (3, 0)


def test_cpu_memory_is_bounded_by_the_block_not_the_gallery(monkeypatch):
    """Force tiny blocks: many blocks and merges must give the same answer as one block."""
    gen = torch.Generator().manual_seed(5)
    q, g = unit_sets(7, 3, 16, gen=gen), unit_sets(333, 4, 16, gen=gen)
    whole = kernels.search(q, g, 20)
    monkeypatch.setattr(search_cpu, "BLOCK_BYTES", 3 * 3 * 4 * 4 * 16)  # 3 queries x 16 gallery items
    monkeypatch.setattr(search_cpu, "QUERY_BLOCK", 3)
    assert len(list(search_cpu._blocks(q, g))) == 3 * 21
    blocked = kernels.search(q, g, 20)
    assert torch.equal(whole[1], blocked[1]) and torch.allclose(whole[0], blocked[0])


def test_keys_order_by_score_then_lower_index():
    s = torch.tensor([[0.5, -0.0, 0.0, -1.5, 0.5, float("inf"), -3e-39]])
    keys = topk.pack(s, torch.arange(10, 17))
    values, index = topk.unpack(topk.top_keys(keys, 7))
    assert index.tolist() == [[15, 10, 14, 11, 12, 16, 13]]
    for k in range(1, 8):  # the float top-k shortcut, ties at the k-th place included
        assert torch.equal(topk.block_top(s, 10, k), topk.top_keys(keys, k))
    assert torch.equal(values, s[:, index[0] - 10])  # bit-exact round trip, denormals included


def test_bad_input_is_refused_with_a_specific_error():
    q, g = unit_sets(2, 3, 8), unit_sets(4, 3, 8)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        kernels.search(q, g, 0)
    with pytest.raises(ValueError, match="expected query"):
        kernels.search(q, unit_sets(4, 3, 9), 2)
    with pytest.raises(ValueError, match="margin must have shape"):
        kernels.search(q, g, 2, margin=torch.zeros(3))
    with pytest.raises(ValueError, match="unknown set similarity mode"):
        kernels.set_scores(q, g, mode="mean")
    with pytest.raises(ValueError, match="at least one row"):
        kernels.search(q[:, :0], g, 2)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU: the compiled Triton kernels at a realistic size")
def test_compiled_kernel_at_scale():
    gen = torch.Generator().manual_seed(6)
    q, g = unit_sets(64, 5, 512, torch.float16, gen=gen), unit_sets(20000, 5, 512, torch.float16, gen=gen)
    margin = 0.1 * torch.rand(20000, generator=gen)
    found = kernels.search(q.cuda(), g.cuda(), 10, margin=margin.cuda())
    reference = torch.cat([set_similarity_reference(q.double(), g[i:i + 2000].double(), margin=margin[i:i + 2000])
                           for i in range(0, 20000, 2000)], dim=1)
    check_topk(*found, reference, 10, atol=1e-3)




def test_gallery_offsets_past_2_31_elements_are_read_in_place():
    """Item 2 of this view starts 2**31 + 128 elements into its storage: a 32-bit offset wraps
    (at 1M x 5 x 512 every item from 838,860 on). The storage is virtual, 4 GiB that are never
    touched but for the three items' pages, and the kernel reads the view where it is."""
    mod = triton_module()
    n, kg, d, stride = 3, 2, 16, 2**30 + 64
    gen = torch.Generator().manual_seed(8)
    items = unit_sets(n, kg, d, torch.float16, gen=gen)
    q = unit_sets(2, 2, d, torch.float16, gen=gen)
    storage = torch.empty(stride * (n - 1) + kg * d, dtype=torch.float16, device=DEVICE)
    g = storage.as_strided((n, kg, d), (stride, d, 1))
    g.copy_(items)
    reference = set_similarity_reference(q.double(), items.double())
    assert torch.allclose(mod.scores(q.to(DEVICE), g, 16.0, 1.0, None, "chamfer").cpu().double(), reference,
                          atol=1e-4)
    check_topk(*mod.search(q.to(DEVICE), g, 3, 16.0, 1.0, None, "chamfer"), reference, 3, atol=1e-4)


class _GridRecorder:
    """Stands in for a kernel: records the grid a launch asks for and its BN, runs nothing."""

    def __init__(self):
        self.grids = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.grids.append((grid, kwargs["BN"]))
        return launch


@pytest.mark.parametrize("kernel", ["_dense_kernel", "_topk_kernel"])
def test_launch_grids_stay_within_cuda_limits_at_10m_items(monkeypatch, kernel):
    """CUDA caps grid axes 1 and 2 at 65,535 programs: the dense grid once put N / BN there
    and could not launch past ~1.05M items (evaluation and every k > 64 use it)."""
    mod = triton_module()
    recorder = _GridRecorder()
    monkeypatch.setattr(mod, kernel, recorder)
    n, nq = 10_000_000, 3
    g = torch.ones(1, 1, 8).expand(n, 1, 8)  # 10M items that take 32 bytes
    q = torch.ones(nq, 1, 8)
    if kernel == "_dense_kernel":
        mod.scores(q, g, 16.0, 1.0, None, "chamfer")
    else:
        mod.search(q, g, 10, 16.0, 1.0, None, "chamfer")
    assert recorder.grids
    for grid, bn in recorder.grids:
        assert grid[0] <= 2**31 - 1 and all(axis <= 65535 for axis in grid[1:]), grid
        if kernel == "_dense_kernel":  # one program per (gallery tile, query block): every item scored
            assert grid[0] * bn >= n


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("scaled", ["all rows", "one item"])
def test_rows_that_are_not_unit_norm_match_the_reference(name, scaled):
    """The fast path's constant shift assumes cosines in [-1, 1]; scaled rows overflow or
    underflow it (alpha <= 40). Both paths must notice and recompute in general form."""
    search, scores, device = backend(name)
    gen = torch.Generator().manual_seed(9)
    q, g = 8 * unit_sets(3, 4, 16, gen=gen), unit_sets(50, 4, 16, gen=gen)
    if scaled == "all rows":
        g = 8 * g
    else:
        g[17] *= 8
    reference = set_similarity_reference(q.double(), g.double())
    dense = scores(q.to(device), g.to(device), 16.0, 1.0, None, "chamfer").cpu().double()
    assert torch.isfinite(dense).all() and torch.allclose(dense, reference, rtol=1e-5, atol=1e-4)
    check_topk(*search(q.to(device), g.to(device), 5, 16.0, 1.0, None, "chamfer"), reference, 5, atol=1e-4)
