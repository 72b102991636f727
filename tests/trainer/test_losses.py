import pytest
import torch
import torch.nn.functional as F

from trainer.losses import id_loss, sdm_loss


def irra_sdm(image, text, pid, logit_scale, eps=1e-8):
    """IRRA's compute_sdm (objectives.py), transcribed, as the reference."""
    pid = pid.reshape((-1, 1))
    labels = (pid - pid.t() == 0).float()
    image_norm = image / image.norm(dim=1, keepdim=True)
    text_norm = text / text.norm(dim=1, keepdim=True)
    t2i = text_norm @ image_norm.t()
    text_proj_image, image_proj_text = logit_scale * t2i, logit_scale * t2i.t()
    labels_distribute = labels / labels.sum(dim=1)
    i2t_loss = F.softmax(image_proj_text, 1) * (F.log_softmax(image_proj_text, 1) - torch.log(labels_distribute + eps))
    t2i_loss = F.softmax(text_proj_image, 1) * (F.log_softmax(text_proj_image, 1) - torch.log(labels_distribute + eps))
    return torch.mean(torch.sum(i2t_loss, 1)) + torch.mean(torch.sum(t2i_loss, 1))


def test_sdm_matches_irra():
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(12, 16, generator=g), torch.randn(12, 16, generator=g)
    pid = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 6, 6])
    assert sdm_loss(image, text, pid, 50.0).item() == pytest.approx(irra_sdm(image, text, pid, 50.0).item(), rel=1e-6)


def test_sdm_is_zero_when_people_are_separated():
    basis = torch.eye(8)
    pid = torch.tensor([0, 0, 1, 2, 2, 3])
    feats = basis[pid]  # same person -> same direction, different people orthogonal
    assert sdm_loss(feats, feats, pid, 50.0).item() < 1e-6
    swapped = basis[pid.roll(1)]
    assert sdm_loss(feats, swapped, pid, 50.0).item() > 1.0


def test_sdm_symmetric_in_modalities_and_gradients_finite():
    g = torch.Generator().manual_seed(1)
    image = torch.randn(6, 8, generator=g, requires_grad=True)
    text = torch.randn(6, 8, generator=g, requires_grad=True)
    pid = torch.tensor([0, 1, 1, 2, 3, 3])
    loss = sdm_loss(image, text, pid, 50.0)
    assert loss.item() == pytest.approx(sdm_loss(text, image, pid, 50.0).item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(image.grad).all() and torch.isfinite(text.grad).all()


def test_id_loss_averages_both_modalities():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    y = torch.tensor([0, 6, 3, 3, 1])
    assert id_loss(a, b, y).item() == pytest.approx(
        (F.cross_entropy(a, y).item() + F.cross_entropy(b, y).item()) / 2, rel=1e-6)
