"""kernels.scores_autograd: the memory-bounded differentiable scores against the reference."""
import pytest
import torch
import torch.nn.functional as F

from kernels import scores_autograd
from kernels.scores_autograd import set_scores_with_grad
from kernels.set_similarity import set_similarity_reference


def unit_sets(n, k, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, k, d, generator=g, dtype=torch.float64), dim=-1).to(dtype)


@pytest.mark.parametrize("mode", ["chamfer", "maxsim"])
def test_gradients_match_finite_differences_in_float64(mode):
    q = unit_sets(3, 4, 6, seed=1).requires_grad_()
    g = unit_sets(5, 3, 6, seed=2).requires_grad_()
    margin = (0.1 * torch.rand(5, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b, m: set_scores_with_grad(a, b, alpha=8.0, weight=0.7, margin=m, mode=mode), (q, g, margin))


@pytest.mark.parametrize("mode,alpha,weight", [("chamfer", 16.0, 1.0), ("chamfer", 64.0, 0.5),
                                               ("maxsim", 16.0, 1.0), ("chamfer", 16.0, 0.0)])
def test_matches_the_reference_through_a_loss_over_many_blocks(monkeypatch, mode, alpha, weight):
    monkeypatch.setattr(scores_autograd, "BLOCK_BYTES", 4096)  # a handful of gallery items per block
    q, g = unit_sets(9, 5, 32, seed=3, dtype=torch.float32), unit_sets(61, 5, 32, seed=4, dtype=torch.float32)
    target = torch.randn(9, 61, generator=torch.Generator().manual_seed(5))
    grads = []
    for fn in (set_scores_with_grad, set_similarity_reference):
        a, b = q.clone().requires_grad_(), g.clone().requires_grad_()
        s = fn(a, b, alpha=alpha, weight=weight, mode=mode)
        (s * target).square().sum().backward()
        grads.append((s.detach(), a.grad, b.grad))
    for ours, ref in zip(*grads):
        assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4)


def test_fp16_gallery_gets_an_fp16_gradient():
    q = unit_sets(4, 3, 16, seed=6, dtype=torch.float16).requires_grad_()
    g = unit_sets(7, 3, 16, seed=7, dtype=torch.float16).requires_grad_()
    set_scores_with_grad(q, g).sum().backward()
    reference = unit_sets(4, 3, 16, seed=6).requires_grad_()
    set_similarity_reference(reference, g.detach().double()).sum().backward()
    assert q.grad.dtype == g.grad.dtype == torch.float16
    assert torch.allclose(q.grad.double(), reference.grad, atol=1e-2)


@pytest.mark.parametrize("mode,shape", [("chamfer", (5, 23, 5, 3, 40)), ("maxsim", (3, 17, 4, 4, 16)),
                                        ("chamfer", (2, 9, 1, 1, 8))])
def test_triton_backward_matches_the_torch_blocks(mode, shape):
    """The Triton backward kernels (interpreter without a GPU, conftest.py) against the torch blocks."""
    grad_triton = pytest.importorskip("kernels.grad_triton", reason="triton is not installed")
    nq, n, kq, kg, d = shape
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, g = unit_sets(nq, kq, d, seed=8, dtype=torch.float32), unit_sets(n, kg, d, seed=9, dtype=torch.float32)
    grad = torch.randn(nq, n, generator=torch.Generator().manual_seed(10))
    dq, dg = grad_triton.set_scores_grad(q.to(device), g.to(device), grad.to(device), 16.0, 0.8, mode)
    ref_dq, ref_dg = scores_autograd._backward(q, g, grad, 16.0, 0.8, mode)
    assert torch.allclose(dq.cpu(), ref_dq, atol=1e-5) and torch.allclose(dg.cpu(), ref_dg, atol=1e-5)
