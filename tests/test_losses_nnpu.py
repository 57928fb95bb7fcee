"""nnPU risk (Zhao, Pang et al., MICCAI 2021, Eq. 9-12; Kiryo et al. 2017): sparse_ext.losses."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_ext.losses import NonNegativePULoss, nnpu_loss


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# sigmoid logits: two positives (label 1), three unlabeled (label 0)
X = [2.0, -1.0, 0.5, -3.0, 1.5]
Y = [1, 1, 0, 0, 0]
PI = 0.3


def hand_terms(mode: str):
    """Positive risk and negative risk written out from Eq. 10-12."""
    h0 = [softplus(x) for x in X]  # -log p(background) = -log(1 - sigmoid(x))
    h1 = [softplus(-x) for x in X]  # -log sigmoid(x)
    pos = [i for i, y in enumerate(Y) if y == 1]
    unl = [i for i, y in enumerate(Y) if y == 0]
    positive_risk = PI / len(pos) * sum(h1[i] for i in pos)
    if mode == "detection":
        expected = sum(h0) / len(X)
    else:
        expected = sum(h0[i] for i in unl) / len(unl)
    return positive_risk, expected - PI / len(pos) * sum(h0[i] for i in pos)


@pytest.mark.parametrize("mode", ["detection", "classic"])
@pytest.mark.parametrize("nonnegative", ["clamp", "none"])
def test_sigmoid_hand_computed(mode, nonnegative):
    positive_risk, negative_risk = hand_terms(mode)
    if nonnegative == "clamp":
        negative_risk = max(0.0, negative_risk)
    got = nnpu_loss(
        torch.tensor(X, dtype=torch.float64),
        torch.tensor(Y),
        PI,
        mode=mode,
        nonnegative=nonnegative,
    )
    assert got.item() == pytest.approx(positive_risk + negative_risk, rel=1e-12)


def test_softmax_hand_computed_and_background_column():
    # three classes: 0, 1 objects, 2 = background (last column, the default)
    logits = torch.tensor(
        [[1.0, 0.0, -1.0], [0.2, 2.0, 0.1], [0.0, 0.0, 3.0], [1.0, 1.0, 0.5]], dtype=torch.float64
    )
    labels = torch.tensor([0, 1, 2, 2])
    log_p = torch.log_softmax(logits, dim=1)
    h0 = -log_p[:, 2]
    h1 = -log_p[torch.arange(4), labels]
    pi = 0.2
    negative = h0.sum() / 4 - pi / 2 * (h0[0] + h0[1])
    expected = pi / 2 * (h1[0] + h1[1]) + negative.clamp_min(0)
    got = nnpu_loss(logits, labels, pi)
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    # the same data with the background moved to column 0
    moved = logits[:, [2, 0, 1]]
    moved_labels = torch.tensor([1, 2, 0, 0])
    assert nnpu_loss(moved, moved_labels, pi, background_index=0).item() == pytest.approx(
        got.item(), rel=1e-12
    )


def test_softmax_two_columns_equals_sigmoid():
    x = torch.tensor(X, dtype=torch.float64)
    two = torch.stack([x, torch.zeros_like(x)], dim=1)  # column 1 = background, logit 0
    labels = torch.tensor([0 if y else 1 for y in Y])
    for mode in ("detection", "classic"):
        assert nnpu_loss(two, labels, PI, mode=mode).item() == pytest.approx(
            nnpu_loss(x, torch.tensor(Y), PI, mode=mode).item(), rel=1e-12
        )


def test_none_is_the_unbiased_estimator_and_can_be_negative():
    # a large prior and confident positives make the negative risk negative
    x = torch.tensor([4.0, 4.0, -3.0, -3.0], dtype=torch.float64)
    y = torch.tensor([1, 1, 0, 0])
    pi = 0.9
    unbiased = nnpu_loss(x, y, pi, nonnegative="none")
    h0 = torch.nn.functional.softplus(x)
    h1 = torch.nn.functional.softplus(-x)
    manual = pi / 2 * h1[:2].sum() + h0.sum() / 4 - pi / 2 * h0[:2].sum()
    assert unbiased.item() == pytest.approx(manual.item(), rel=1e-12)
    negative = h0.sum() / 4 - pi / 2 * h0[:2].sum()
    assert negative < 0
    clamped = nnpu_loss(x, y, pi, nonnegative="clamp")
    assert clamped.item() == pytest.approx((pi / 2 * h1[:2].sum()).item(), rel=1e-12)


def test_kiryo_value_and_gradient():
    x = torch.tensor([4.0, 4.0, -3.0, -3.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1, 1, 0, 0])
    pi, beta, gamma = 0.9, 0.01, 0.5
    loss = nnpu_loss(x, y, pi, nonnegative="kiryo", beta=beta, gamma=gamma)
    h0 = torch.nn.functional.softplus(x)
    h1 = torch.nn.functional.softplus(-x)
    positive = pi / 2 * h1[:2].sum()
    negative = h0.sum() / 4 - pi / 2 * h0[:2].sum()
    assert negative.item() < -beta
    assert loss.item() == pytest.approx(positive.item() - beta, rel=1e-12)
    (grad,) = torch.autograd.grad(loss, x)
    (want,) = torch.autograd.grad(-gamma * negative, x)
    assert torch.allclose(grad, want)
    # when the negative risk is not below -beta, kiryo is the unbiased risk
    x2 = torch.tensor(X, dtype=torch.float64)
    assert nnpu_loss(x2, torch.tensor(Y), PI, nonnegative="kiryo").item() == pytest.approx(
        nnpu_loss(x2, torch.tensor(Y), PI, nonnegative="none").item()
    )


def test_no_positives_and_no_samples():
    x = torch.tensor([0.5, -1.0], dtype=torch.float64)
    only_unlabeled = nnpu_loss(x, torch.tensor([0, 0]), 0.3)
    assert only_unlabeled.item() == pytest.approx(
        torch.nn.functional.softplus(x).mean().item(), rel=1e-12
    )
    empty = torch.zeros(0, 3, requires_grad=True)
    loss = nnpu_loss(empty, torch.zeros(0, dtype=torch.long), 0.3)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()


def test_no_unlabeled():
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    y = torch.tensor([1, 1])
    for mode in ("detection", "classic"):
        loss = nnpu_loss(x, y, 0.4, mode=mode, nonnegative="none")
        assert torch.isfinite(loss)


def test_gradcheck_float64():
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 2, 0, 2])
    for nonnegative in ("clamp", "none", "kiryo"):
        assert torch.autograd.gradcheck(
            lambda t, nn=nonnegative: nnpu_loss(t, labels, 0.25, nonnegative=nn), (x,)
        )


def test_module_matches_function_and_half_precision():
    logits = torch.randn(8, 3)
    labels = torch.tensor([0, 2, 2, 1, 2, 2, 0, 2])
    module = NonNegativePULoss(prior=0.2, mode="classic")
    assert module(logits, labels).item() == pytest.approx(
        nnpu_loss(logits, labels, 0.2, mode="classic").item()
    )
    half = nnpu_loss(logits.half(), labels, 0.2)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(nnpu_loss(logits.half().float(), labels, 0.2).item())


@pytest.mark.parametrize("prior", [0.0, 1.0, -0.1, 1.5, float("nan"), "a"])
def test_prior_outside_open_unit_interval(prior):
    with pytest.raises(ValueError, match="prior"):
        nnpu_loss(torch.zeros(2), torch.tensor([0, 1]), prior)
    with pytest.raises(ValueError, match="prior"):
        NonNegativePULoss(prior=prior)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="mode"):
        nnpu_loss(torch.zeros(2), torch.tensor([0, 1]), 0.5, mode="pu")
    with pytest.raises(ValueError, match="nonnegative"):
        nnpu_loss(torch.zeros(2), torch.tensor([0, 1]), 0.5, nonnegative="relu")
    with pytest.raises(ValueError, match="labels"):
        nnpu_loss(torch.zeros(3, 2), torch.tensor([0, 1]), 0.5)
    with pytest.raises(ValueError, match="labels"):
        nnpu_loss(torch.zeros(2, 2), torch.tensor([0, 5]), 0.5)
    with pytest.raises(ValueError, match="labels"):
        nnpu_loss(torch.zeros(2), torch.tensor([0, 2]), 0.5)
    with pytest.raises(ValueError, match="logits"):
        nnpu_loss(torch.zeros(2, 2, 2), torch.tensor([0, 1]), 0.5)
    with pytest.raises(ValueError, match="background_index"):
        nnpu_loss(torch.zeros(2, 2), torch.tensor([0, 1]), 0.5, background_index=4)


@settings(max_examples=60, deadline=None)
@given(
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]),
    n=st.integers(0, 12),
    positives=st.floats(0.0, 1.0),
    softmax=st.booleans(),
    nonnegative=st.sampled_from(["clamp", "kiryo", "none"]),
    mode=st.sampled_from(["detection", "classic"]),
    half=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_finite_for_finite_logits(scale, n, positives, softmax, nonnegative, mode, half, seed):
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn((n, 3) if softmax else (n,), generator=g)
    if half:
        logits = logits.clamp(-6e4, 6e4).half()
    logits.requires_grad_(True)
    is_pos = torch.rand(n, generator=g) < positives
    labels = torch.where(is_pos, torch.randint(0, 2, (n,), generator=g), 2) if softmax else is_pos
    loss = nnpu_loss(logits, labels.long(), 0.3, mode=mode, nonnegative=nonnegative)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
