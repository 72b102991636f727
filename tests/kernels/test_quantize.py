"""8-bit galleries (kernels/quantize.py): int8 sets with a float32 scale per row, scored by
kernels.search / set_scores / search_parts on every backend as the torch reference scores the
dequantized sets (queries rounded to fp16, as both backends take them)."""
import zlib

import pytest
import torch

import kernels
from kernels import search_cpu
from kernels.quantize import check_scale, dequantize_sets, quantize_sets
from kernels.set_similarity import set_similarity_reference
from tests.kernels.test_filter import check_filtered
from tests.kernels.test_search import BACKENDS, backend, check_topk, exact_sets, unit_sets

pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")


def reference_of(q, g8, scale, **kw):
    """The definition: the dequantized gallery, scored in float64 against fp16-rounded queries."""
    return set_similarity_reference(q.half().double(), dequantize_sets(g8, scale).double(), **kw)


def test_quantize_round_trip_is_within_half_a_step_per_element():
    gen = torch.Generator().manual_seed(20)
    x = unit_sets(33, 5, 24, gen=gen)
    x[3, 2] = 0  # an all-zero row: scale 0, dequantized zeros
    q, scale = quantize_sets(x)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (33, 5)
    assert q.abs().amax(2)[scale > 0].eq(127).all()  # each row uses the full range
    err = (dequantize_sets(q, scale) - x).abs()
    assert (err <= scale[..., None] / 2 + 1e-7).all()
    assert scale[3, 2] == 0 and dequantize_sets(q, scale)[3, 2].eq(0).all()
    assert torch.equal(quantize_sets(-x)[0], -q)  # symmetric


def test_bad_scale_or_sets_are_refused_in_one_line():
    q, scale = quantize_sets(unit_sets(4, 3, 8))
    cases = [(q, scale.half(), "scale must be float32 \\[4, 3\\]"), (q, scale[:, :2], "scale must be float32"),
             (q.float(), scale, "a scale goes with int8 sets")]
    for sets, s, message in cases:
        with pytest.raises(ValueError, match=message) as e:
            check_scale(sets, s)
        assert "\n" not in str(e.value)
    queries = unit_sets(2, 3, 8)
    with pytest.raises(ValueError, match="scored with its scale"):
        kernels.search(queries, q, 2)
    with pytest.raises(ValueError, match="scale must be float32"):
        kernels.set_scores(queries, q, scale=scale[:3])
    with pytest.raises(ValueError, match="expected float sets"):
        quantize_sets(q)


SHAPES = [(3, 37, 5, 5, 24), (1, 100, 1, 1, 8), (5, 70, 4, 3, 40), (33, 45, 5, 5, 24)]  # off every block; K = 1


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode,alpha", [("chamfer", 16.0), ("chamfer", 64.0), ("maxsim", 16.0)])
def test_int8_gallery_matches_the_reference_of_its_dequantized_sets(name, shape, mode, alpha):
    search, scores, device = backend(name)
    nq, n, kq, kg, d = shape
    gen = torch.Generator().manual_seed(zlib.crc32(repr(("int8", shape, mode, alpha)).encode()))
    q, margin = unit_sets(nq, kq, d, gen=gen), 0.2 * torch.rand(n, generator=gen)
    g8, scale = quantize_sets(unit_sets(n, kg, d, gen=gen))
    reference = reference_of(q, g8, scale, alpha=alpha, margin=margin.double(), mode=mode)
    on = lambda *ts: [t.to(device) for t in ts]  # noqa: E731
    dense = scores(*on(q.half(), g8), alpha, 1.0, margin.to(device), mode, scale.to(device))
    assert torch.allclose(dense.cpu().double(), reference, atol=1e-4)
    for k in (1, 10, n + 5):
        found = search(*on(q.half(), g8), k, alpha, 1.0, margin.to(device), mode, None, scale.to(device))
        check_topk(*found, reference, k, atol=1e-4)


@pytest.mark.parametrize("name", BACKENDS)
def test_int8_filtered_chunked_weight_zero_empty_and_ties(name):
    search, scores, device = backend(name)
    gen = torch.Generator().manual_seed(21)
    q = unit_sets(3, 3, 16, gen=gen)
    g8, scale = quantize_sets(unit_sets(150, 3, 16, gen=gen))
    on = lambda *ts: [t.to(device) for t in ts]  # noqa: E731
    reference = reference_of(q, g8, scale)
    allowed = torch.rand(150, generator=gen) < 0.3
    for k in (4, 100):  # 100: the chunked dense path
        check_filtered(search(*on(q.half(), g8), k, 16.0, 1.0, None, "chamfer", allowed.to(device), scale.to(device)),
                       reference, allowed, k, atol=1e-4)
    glob = q[:, 0].half().double() @ dequantize_sets(g8, scale)[:, 0].double().T  # weight 0: the global rows
    check_topk(*search(*on(q.half(), g8), 5, 16.0, 0.0, None, "chamfer", None, scale.to(device)), glob, 5, atol=1e-4)
    s, i = search(*on(q.half(), g8[:0]), 4, 16.0, 1.0, None, "chamfer", None, scale[:0].to(device))
    assert s.shape == i.shape == (3, 0)
    assert scores(*on(q.half(), g8[:0]), 16.0, 1.0, None, "chamfer", scale[:0].to(device)).shape == (3, 0)
    base = exact_sets(12, 4, 16, gen)  # entries +-0.5: code +-127, products exact, duplicates tie bit for bit
    t8, tscale = quantize_sets(torch.cat([base, base, base[3:9]]))
    tq = exact_sets(3, 4, 16, gen)
    expected = reference_of(tq, t8, tscale).sort(dim=1, descending=True, stable=True).indices
    for k in (1, 9, 30):
        found = search(*on(tq.half(), t8), k, 16.0, 1.0, None, "chamfer", None, tscale.to(device))
        assert torch.equal(found[1].cpu(), expected[:, :k])


def test_search_parts_takes_parts_with_a_scale_beside_plain_tuples():
    """A gallery in three parts, one 8-bit (a Part with its scale), two fp16 (a Part without, and
    the 4-tuple serving/live_gallery.py builds): exactly one search over them concatenated."""
    gen = torch.Generator().manual_seed(22)
    q = unit_sets(4, 5, 32, gen=gen)
    a, c = unit_sets(30, 5, 32, torch.float16, gen=gen), unit_sets(25, 5, 32, torch.float16, gen=gen)
    b8, bscale = quantize_sets(unit_sets(40, 5, 32, gen=gen))
    margin = 0.1 * torch.rand(95, generator=gen)
    parts = [(0, a, margin[:30], None), kernels.Part(30, b8, margin[30:70], None, bscale),
             kernels.Part(70, c, margin[70:], None)]
    whole = torch.cat([a.float(), dequantize_sets(b8, bscale), c.float()])
    expected = kernels.search(q.half().float(), whole, 12, margin=margin)
    found = kernels.search_parts(q, parts, 12)
    assert torch.equal(found[1], expected[1]) and torch.allclose(found[0], expected[0], atol=1e-5)


def test_cpu_path_dequantizes_one_block_at_a_time(monkeypatch):
    gen = torch.Generator().manual_seed(23)
    q = unit_sets(2, 3, 16, gen=gen)
    g8, scale = quantize_sets(unit_sets(333, 4, 16, gen=gen))
    whole = kernels.search(q, g8, 20, scale=scale)
    rows = []
    monkeypatch.setattr(search_cpu, "dequantize_sets", lambda s, sc: rows.append(len(s)) or dequantize_sets(s, sc))
    monkeypatch.setattr(search_cpu, "BLOCK_BYTES", 2 * 3 * 4 * 4 * 16)  # 16 gallery items a block
    blocked = kernels.search(q, g8, 20, scale=scale)
    assert max(rows) == 16 and sum(rows) == 333
    assert torch.equal(whole[1], blocked[1]) and torch.allclose(whole[0], blocked[0])
