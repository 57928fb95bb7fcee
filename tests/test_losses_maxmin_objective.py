"""sparse_ext.losses.maxmin_objective against hand-computed values of Belharbi et al., "Deep
interpretable classification and weakly-supervised segmentation of histology images via max-min
uncertainty", IEEE TMI 2022 (arXiv:2011.07221), Eq. 7 and 12."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sparse_ext.losses.maxmin_objective import (
    barrier_t,
    class_agnostic_activation,
    localizer_mask,
    maxmin_objective,
    wildcat_pool,
)


def test_wildcat_pool_hand_values():
    cams = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert float(wildcat_pool(cams, kmax=0.5)) == pytest.approx(3.5)  # mean of 4, 3
    assert float(wildcat_pool(cams, kmax=2)) == pytest.approx(3.5)  # absolute count
    assert float(wildcat_pool(cams, kmax=0.5, kmin=0.25, alpha=0.6)) == pytest.approx(3.5 + 0.6)
    assert float(wildcat_pool(cams, kmax=0.01)) == pytest.approx(4.0)  # at least one element
    with pytest.raises(ValueError, match="kmax"):
        wildcat_pool(cams, kmax=0.0)
    with pytest.raises(ValueError, match="N, C, H, W"):
        wildcat_pool(cams[0])


def test_class_agnostic_activation_is_posterior_weighted():
    cams = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2)
    logits = torch.tensor([[0.0, math.log(3.0)]])  # posterior (0.25, 0.75)
    act = class_agnostic_activation(cams, logits)
    assert act.shape == (1, 1, 1, 2)
    assert act.flatten().tolist() == pytest.approx([0.25, 0.75])
    with pytest.raises(ValueError, match="class_logits"):
        class_agnostic_activation(cams, torch.zeros(1, 3))


def test_barrier_t_schedule():
    assert barrier_t(0) == 5.0
    assert barrier_t(10) == pytest.approx(5 * 1.01**10)
    assert barrier_t(100) == 10.0  # 5 * 1.01**100 = 13.5, capped
    assert barrier_t(3, t0=10, factor=1.1, t_max=30) == pytest.approx(13.31)  # Camelyon setting
    with pytest.raises(ValueError, match="epoch"):
        barrier_t(-1)
    with pytest.raises(ValueError, match="> 0"):
        barrier_t(1, t0=0)


def test_localizer_mask_is_normalised_per_sample():
    g = torch.Generator().manual_seed(0)
    act = torch.rand(1, 1, 4, 4, generator=g)
    batch = torch.cat([act, 10.0 * act + 3.0])  # same map, another scale and offset
    mask = localizer_mask(batch, (8, 8))
    assert mask.shape == (2, 1, 8, 8)
    assert torch.allclose(mask[0], mask[1], atol=1e-6)  # per sample, not per batch
    # Eq. 12 at the extremes of the normalised activation: sigmoid(5 * (0 - 0.15)), sigmoid(5 * 0.85)
    m = localizer_mask(act)
    assert float(m.min()) == pytest.approx(1 / (1 + math.exp(0.75)), abs=1e-6)
    assert float(m.max()) == pytest.approx(1 / (1 + math.exp(-4.25)), abs=1e-6)


class _MeanLinear(torch.nn.Module):
    """A tiny classifier: spatial mean of each channel, then a linear layer."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


def test_maxmin_objective_hand_values():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 4, 4)
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :1] = 1.0  # s+ = 1/4 of the image, s- = 3/4
    mask.requires_grad_(True)
    labels = torch.tensor([0, 1])
    clf = _MeanLinear(3, 2)
    loc_logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    t, lam = 5.0, 0.3
    out = maxmin_objective(images, mask, labels, clf, t, lam=lam, localizer_logits=loc_logits)
    assert set(out) == {"loss_fg_cls", "loss_bg_reg", "loss_size", "loss_loc_cls"}
    # H(p, p+) on x+ = x * M
    with torch.no_grad():
        fg = clf(images * mask)
        p = clf(images * (1 - mask)).softmax(1)
    assert out["loss_fg_cls"].item() == pytest.approx(F.cross_entropy(fg, labels).item())
    # EEM: lambda * (-H(p-)) = lambda * mean_n sum_c p log p on x- = x * (1 - M)
    assert out["loss_bg_reg"].item() == pytest.approx(lam * float((p * p.log()).sum(1).mean()))
    # both sizes inside the barrier's log region (z <= -1/t^2): -(1/t)(log s+ + log s-)
    assert out["loss_size"].item() == pytest.approx(-(math.log(0.25) + math.log(0.75)) / t)
    assert float(out["loss_loc_cls"]) == pytest.approx(
        float(F.cross_entropy(loc_logits, labels)), rel=1e-6
    )
    sum(out.values()).backward()
    assert mask.grad is not None and float(mask.grad.abs().sum()) > 0
    assert clf.fc.weight.grad is not None


def test_maxmin_objective_sem_and_no_regulariser():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 4, 4)
    mask = torch.full((2, 4, 4), 0.5)  # (N, H, W) is accepted
    labels = torch.tensor([1, 0])
    clf = _MeanLinear(3, 4)
    sem = maxmin_objective(images, mask, labels, clf, 5.0, lam=1.0, regularizer="sem")
    # SEM: H(q, p-) = -mean_c log p_c with q uniform, averaged over the batch
    logp = clf(images * 0.5).log_softmax(1)
    assert float(sem["loss_bg_reg"]) == pytest.approx(float(-logp.mean(1).mean()))
    assert float(sem["loss_bg_reg"]) >= math.log(4) - 1e-6  # minimum at the uniform posterior
    none = maxmin_objective(images, mask, labels, clf, 5.0, regularizer=None)
    assert set(none) == {"loss_fg_cls", "loss_size"}
    assert all(torch.isfinite(v) for v in sem.values())


def test_maxmin_objective_bad_inputs():
    images = torch.randn(2, 3, 4, 4)
    clf = _MeanLinear(3, 2)
    labels = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="regularizer"):
        maxmin_objective(images, torch.ones(2, 1, 4, 4), labels, clf, 5.0, regularizer="kl")
    with pytest.raises(ValueError, match="mask"):
        maxmin_objective(images, torch.ones(2, 1, 2, 2), labels, clf, 5.0)
    with pytest.raises(ValueError, match="labels"):
        maxmin_objective(images, torch.ones(2, 1, 4, 4), labels[:1], clf, 5.0)
