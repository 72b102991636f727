import pytest
import torch
import torch.nn.functional as F

from kernels.set_similarity import set_similarity_reference, slot_chamfer, smooth_chamfer


def random_sets(n, k, d=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, k, d, generator=g, dtype=dtype), dim=-1)


def test_weight_zero_is_global_cosine_and_single_rows_reduce_to_cosine():
    q, g = random_sets(5, 3, seed=1), random_sets(7, 4, seed=2)
    cos = q[:, 0] @ g[:, 0].T
    assert torch.allclose(set_similarity_reference(q, g, weight=0.0), cos)
    q1, g1 = q[:, :1], g[:, :1]  # K = 0: SC of one element each is its cosine
    assert torch.allclose(set_similarity_reference(q1, g1, weight=1.0), 2 * (q1[:, 0] @ g1[:, 0].T))


def test_symmetric_in_its_two_directions():
    q, g = random_sets(6, 5, seed=3), random_sets(9, 3, seed=4)
    assert torch.allclose(set_similarity_reference(q, g), set_similarity_reference(g, q).T)


def test_invariant_to_the_order_of_set_elements():
    q, g = random_sets(4, 5, seed=5), random_sets(6, 5, seed=6)
    perm = torch.tensor([0, 3, 1, 4, 2])  # row 0 (global) stays first
    assert torch.allclose(set_similarity_reference(q, g), set_similarity_reference(q[:, perm], g[:, perm.flip(0).roll(1)]))


def test_slot_chamfer_leaves_the_global_row_out():
    q, g = random_sets(4, 5, seed=9), random_sets(7, 3, seed=10)
    slots = slot_chamfer(q, g, alpha=8.0)
    # SC over rows 1..K alone: the full score of the slot-only sets minus their first row's cosine
    qs, gs = q[:, 1:], g[:, 1:]
    expected = set_similarity_reference(qs, gs, alpha=8.0) - set_similarity_reference(qs, gs, weight=0.0)
    assert slots.shape == (4, 7) and torch.allclose(slots, expected)
    other_globals = torch.cat([random_sets(4, 1, seed=11), q[:, 1:]], dim=1)
    assert torch.allclose(slot_chamfer(other_globals, g, alpha=8.0), slots)


def test_approaches_best_match_as_alpha_grows():
    q, g = random_sets(3, 4, seed=7), random_sets(5, 6, seed=8)
    cos = torch.einsum("qkd,nld->qnkl", q, g)
    best = (cos.amax(-1).mean(-1) + cos.amax(-2).mean(-1)) / 2
    gaps = [(smooth_chamfer(cos, a) - best).abs().max().item() for a in (4.0, 64.0, 4096.0)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-3
    assert torch.isfinite(smooth_chamfer(cos.float(), 1e6)).all()  # logsumexp: no overflow


def test_margin_is_subtracted_per_gallery_item_and_shapes_are_checked():
    q, g = random_sets(2, 3, seed=9), random_sets(4, 3, seed=10)
    margin = torch.tensor([0.0, 0.1, 0.2, 0.3], dtype=torch.float64)
    assert torch.allclose(set_similarity_reference(q, g) - margin, set_similarity_reference(q, g, margin=margin))
    with pytest.raises(ValueError, match="margin must have shape"):
        set_similarity_reference(q, g, margin=margin[:3])
    with pytest.raises(ValueError, match="expected query"):
        set_similarity_reference(q[0], g)
    assert set_similarity_reference(q, g[:0]).shape == (2, 0)


def test_gradients_match_finite_differences():
    q, g = random_sets(2, 3, d=5, seed=11).requires_grad_(), random_sets(3, 2, d=5, seed=12).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: set_similarity_reference(a, b, alpha=8.0), (q, g))
