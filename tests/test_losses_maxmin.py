"""Max-min uncertainty terms (Belharbi et al., Eq. 4-12): sparse_ext.losses.maxmin."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_ext.losses import extended_log_barrier, size_barrier, soft_mask, uncertainty_regularizer


def test_eem_and_sem_hand_computed():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]], dtype=torch.float64)
    # probabilities (1/4, 3/4) and (1/2, 1/2)
    neg_entropy = (0.25 * math.log(0.25) + 0.75 * math.log(0.75) + 2 * 0.5 * math.log(0.5)) / 2
    cross_uniform = (-(math.log(0.25) + math.log(0.75)) / 2 - math.log(0.5)) / 2
    assert uncertainty_regularizer(logits, "eem").item() == pytest.approx(neg_entropy, rel=1e-12)
    assert uncertainty_regularizer(logits, "sem").item() == pytest.approx(cross_uniform, rel=1e-12)


def test_eem_is_kl_to_uniform_minus_log_c():
    logits = torch.randn(5, 4, dtype=torch.float64)
    p = logits.softmax(1)
    kl = (p * (p.log() - math.log(1 / 4))).sum(1).mean()
    assert uncertainty_regularizer(logits, "eem").item() == pytest.approx(
        (kl - math.log(4)).item(), rel=1e-12
    )
    # both regularisers are minimal at the uniform posterior
    uniform = torch.zeros(1, 4, dtype=torch.float64)
    assert uncertainty_regularizer(uniform, "eem").item() == pytest.approx(-math.log(4))
    assert uncertainty_regularizer(uniform, "sem").item() == pytest.approx(math.log(4))


@pytest.mark.parametrize("t", [0.5, 5.0, 10.0])
def test_barrier_branches_and_continuity(t):
    z0 = -1.0 / t**2
    z = torch.tensor([2 * z0, z0, 0.3], dtype=torch.float64)
    got = extended_log_barrier(z, t)
    assert got[0].item() == pytest.approx(-math.log(-2 * z0) / t)
    assert got[2].item() == pytest.approx(t * 0.3 - math.log(1 / t**2) / t + 1 / t)
    eps = 1e-7
    around = torch.tensor([z0 - eps, z0 + eps], dtype=torch.float64, requires_grad=True)
    values = extended_log_barrier(around, t)
    assert values[0].item() == pytest.approx(values[1].item(), abs=1e-5)
    (grad,) = torch.autograd.grad(values.sum(), around)
    assert grad[0].item() == pytest.approx(grad[1].item(), rel=1e-5)  # both equal t
    assert grad[1].item() == pytest.approx(t)


def test_barrier_gradient_finite_in_both_branches():
    z = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    extended_log_barrier(z, 5.0).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_size_barrier_hand_computed():
    mask = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    mask[0, 0, 0, 0] = 1.0  # s+ = 1/4, s- = 3/4
    mask[1] = 0.5  # s+ = s- = 1/2
    t = 5.0

    def psi(z):
        return extended_log_barrier(torch.tensor(z, dtype=torch.float64), t).item()

    expected = ((psi(-0.25) + psi(-0.75)) + (psi(-0.5) + psi(-0.5))) / 2
    assert size_barrier(mask, t).item() == pytest.approx(expected, rel=1e-12)
    counts = ((psi(-1.0) + psi(-3.0)) + (psi(-2.0) + psi(-2.0))) / 2
    assert size_barrier(mask[:, 0], t, normalize=False).item() == pytest.approx(counts, rel=1e-12)
    # the empty foreground is penalised more than the balanced split
    assert size_barrier(torch.zeros(1, 4, 4), t) > size_barrier(torch.full((1, 4, 4), 0.5), t)


def test_soft_mask_per_sample_normalisation():
    a = torch.tensor([[[0.0, 1.0]], [[10.0, 30.0]]], dtype=torch.float64)  # (N=2, 1, 2)
    got = soft_mask(a, omega=5.0, sigma=0.15)
    expected = torch.sigmoid(5.0 * (torch.tensor([0.0, 1.0], dtype=torch.float64) - 0.15))
    assert torch.allclose(got[0, 0], expected) and torch.allclose(got[1, 0], expected)
    constant = soft_mask(torch.full((1, 3, 3), 7.0))
    assert torch.allclose(constant, torch.sigmoid(torch.tensor(-0.75)))


def test_gradcheck_float64():
    logits = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: uncertainty_regularizer(x, "eem"), (logits,))
    assert torch.autograd.gradcheck(lambda x: uncertainty_regularizer(x, "sem"), (logits,))
    act = torch.rand(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: size_barrier(soft_mask(x), 5.0), (act,))


def test_errors():
    with pytest.raises(ValueError, match="kind"):
        uncertainty_regularizer(torch.zeros(2, 2), kind="kl")
    with pytest.raises(ValueError, match="logits"):
        uncertainty_regularizer(torch.zeros(2, 1))
    with pytest.raises(ValueError, match="t must"):
        extended_log_barrier(torch.zeros(1), 0.0)
    with pytest.raises(ValueError, match="mask"):
        size_barrier(torch.zeros(2, 3, 4, 4), 5.0)


@settings(max_examples=50, deadline=None)
@given(
    scale=st.sampled_from([1e-4, 1.0, 100.0, 1e4]),
    half=st.booleans(),
    kind=st.sampled_from(["eem", "sem"]),
    seed=st.integers(0, 2**16),
)
def test_finite_for_finite_inputs(scale, half, kind, seed):
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(3, 2, generator=g)
    act = scale * torch.randn(3, 1, 4, 4, generator=g)
    if half:
        logits, act = logits.half(), act.half()
    logits.requires_grad_(True)
    act.requires_grad_(True)
    loss = uncertainty_regularizer(logits, kind) + size_barrier(soft_mask(act), 5.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all() and torch.isfinite(act.grad).all()
