"""kernels.search with a filter (`allowed`, bool [N]) against the reference restricted to the
items it allows, on every backend: never a dropped item, k larger than the matches returns the
matches, ties to the lower gallery index, fresh random filters of every density."""
import zlib

import pytest
import torch

import kernels
from kernels import search_cpu
from kernels.set_similarity import set_similarity_reference
from tests.kernels.test_search import BACKENDS, backend, exact_sets, triton_module, unit_sets

pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")


def check_filtered(found, reference, allowed, k, atol):
    """The top-k of the allowed items alone: only allowed indices, sorted, the right scores."""
    scores, indices = (t.cpu() for t in found)
    kept = allowed.nonzero().squeeze(1)
    expected = reference[:, kept].sort(dim=1, descending=True, stable=True)
    assert scores.shape == indices.shape == (reference.shape[0], min(k, kept.numel()))
    assert allowed[indices].all()
    assert torch.allclose(scores.double(), expected.values[:, :scores.shape[1]], atol=atol)
    assert torch.allclose(reference.gather(1, indices), scores.double(), atol=atol)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("shape", [(3, 37, 5, 5, 24), (1, 100, 1, 1, 8), (5, 70, 4, 3, 40)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("density", [0.05, 0.5, 0.95])
def test_matches_the_reference_on_the_allowed_items(name, shape, density):
    search, _, device = backend(name)
    nq, n, kq, kg, d = shape
    gen = torch.Generator().manual_seed(zlib.crc32(repr((shape, density)).encode()))
    q, g, margin = unit_sets(nq, kq, d, gen=gen), unit_sets(n, kg, d, gen=gen), 0.2 * torch.rand(n, generator=gen)
    allowed = torch.rand(n, generator=gen) < density
    allowed[torch.randint(n, (1,), generator=gen)] = True  # at least one match
    reference = set_similarity_reference(q.double(), g.double(), margin=margin.double())
    for k in (1, 7, n + 5):  # more than the matches: the matches
        found = search(q.to(device), g.to(device), k, 16.0, 1.0, margin.to(device), "chamfer", allowed.to(device))
        check_filtered(found, reference, allowed, k, atol=1e-5)


@pytest.mark.parametrize("name", BACKENDS)
def test_ties_among_allowed_items_go_to_the_lower_index(name):
    search, _, device = backend(name)
    gen = torch.Generator().manual_seed(11)
    base = exact_sets(10, 3, 16, gen)
    g = torch.cat([base, base, base])  # every item three times: a tie each
    q = exact_sets(2, 3, 16, gen)
    allowed = torch.rand(30, generator=gen) < 0.6
    reference = set_similarity_reference(q, g).masked_fill(~allowed, float("-inf"))
    expected = reference.sort(dim=1, descending=True, stable=True).indices
    for k in (1, 5, 30):
        k_found = min(k, int(allowed.sum()))
        found = search(q.to(device), g.to(device), k, 16.0, 1.0, None, "chamfer", allowed.to(device))[1].cpu()
        assert torch.equal(found, expected[:, :k_found])


@pytest.mark.parametrize("name", BACKENDS)
def test_nothing_allowed_everything_allowed(name):
    search, _, device = backend(name)
    gen = torch.Generator().manual_seed(12)
    q, g = unit_sets(3, 2, 8, gen=gen).to(device), unit_sets(40, 2, 8, gen=gen).to(device)
    s, i = search(q, g, 5, 16.0, 1.0, None, "chamfer", torch.zeros(40, dtype=torch.bool, device=device))
    assert s.shape == i.shape == (3, 0) and i.dtype == torch.int64
    every = search(q, g, 5, 16.0, 1.0, None, "chamfer", torch.ones(40, dtype=torch.bool, device=device))
    unfiltered = search(q, g, 5, 16.0, 1.0, None, "chamfer")
    assert all(torch.equal(a, b) for a, b in zip(every, unfiltered))


def test_cpu_filtered_blocks_are_skipped_gathered_or_masked(monkeypatch):
    """16-item blocks: 0 and 2 wholly dropped (skipped), 1 and 3 mostly kept (scored whole,
    masked), 4 and 5 kept below GATHER_BELOW (gathered)."""
    monkeypatch.setattr(search_cpu, "BLOCK_BYTES", 4 * 2 * 3 * 3 * 16)  # 16-item blocks
    gen = torch.Generator().manual_seed(13)
    q, g = unit_sets(2, 3, 16, gen=gen), unit_sets(100, 3, 16, gen=gen)
    allowed = torch.zeros(100, dtype=torch.bool)
    allowed[20:28] = allowed[50:66] = allowed[90] = True
    reference = set_similarity_reference(q.double(), g.double())
    for k in (3, 25, 40):
        check_filtered(search_cpu.search(q, g, k, 16.0, 1.0, None, "chamfer", allowed), reference, allowed, k, 1e-5)


def test_triton_large_k_filters_its_chunked_path():
    mod = triton_module()
    gen = torch.Generator().manual_seed(14)
    q, g = unit_sets(2, 3, 16, gen=gen), unit_sets(400, 3, 16, gen=gen)
    allowed = torch.rand(400, generator=gen) < 0.7
    k = mod.MAX_TOPK_PER_TILE + 30
    reference = set_similarity_reference(q.double(), g.double())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    found = mod.search(q.to(device), g.to(device), k, 16.0, 1.0, None, "chamfer", allowed.to(device))
    check_filtered(found, reference, allowed, k, atol=1e-5)


@pytest.mark.parametrize("allowed, message", [
    (torch.ones(10, dtype=torch.uint8), "allowed must be a bool mask [10]"),
    (torch.ones(9, dtype=torch.bool), "got torch.bool (9,)"),
    (torch.ones(1, 10, dtype=torch.bool), "got torch.bool (1, 10)"),
])
def test_a_bad_filter_is_refused(allowed, message):
    q, g = unit_sets(1, 2, 8), unit_sets(10, 2, 8)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        kernels.search(q, g, 3, allowed=allowed)
