"""nnPU risk (Zhao, Pang et al., MICCAI 2021, Eq. 9-12; Kiryo et al. 2017): sparse_ext.losses."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_ext.losses import NonNegativePULoss, nnpu_loss
from sparse_ext.losses.nnpu import estimated_unlabeled_prior, sampled_prior, unlabeled_prior


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
    mode=st.sampled_from(["detection", "classic", "sampled"]),
    surrogate=st.sampled_from(["log", "sigmoid"]),
    half=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_finite_for_finite_logits(
    scale, n, positives, softmax, nonnegative, mode, surrogate, half, seed
):
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn((n, 3) if softmax else (n,), generator=g)
    if half:
        logits = logits.clamp(-6e4, 6e4).half()
    logits.requires_grad_(True)
    is_pos = torch.rand(n, generator=g) < positives
    labels = torch.where(is_pos, torch.randint(0, 2, (n,), generator=g), 2) if softmax else is_pos
    loss = nnpu_loss(
        logits,
        labels.long(),
        0.3,
        mode="detection" if mode == "sampled" else mode,
        prior_mode="sampled" if mode == "sampled" else "fixed",
        nonnegative=nonnegative,
        surrogate=surrogate,
    )
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


# -- sampled prior (pi_b = Np/N + (Nu/N) pi_u) and the bounded surrogate ------------------------

PI_U = 0.1


def test_unlabeled_prior_and_sampled_prior_hand_computed():
    # pi_u = (1 - f) q / (1 - f q)
    assert unlabeled_prior(0.1, 0.06) == pytest.approx(0.9 * 0.06 / (1 - 0.1 * 0.06), rel=1e-12)
    assert unlabeled_prior(0.3, 0.25) == pytest.approx(0.175 / 0.925, rel=1e-12)
    assert unlabeled_prior(1.0, 0.25) == 0.0  # every object labelled
    assert unlabeled_prior(1e-9, 0.25) == pytest.approx(0.25, rel=1e-6)  # nothing labelled: q
    assert unlabeled_prior(0.5, 0.0) == 0.0
    # pi_b = (Np + Nu pi_u) / N: 2 labelled, 3 unlabeled
    assert sampled_prior(2, 3, PI_U) == pytest.approx(2.3 / 5, rel=1e-12)
    assert sampled_prior(0, 4, PI_U) == pytest.approx(PI_U)
    assert sampled_prior(3, 0, PI_U) == 1.0
    assert sampled_prior(0, 0, PI_U) == 0.0
    for bad in ((0.0, 0.1), (1.5, 0.1), (0.5, 1.0), (0.5, -0.1), (float("nan"), 0.1)):
        with pytest.raises(ValueError, match="annotated_fraction|object_share"):
            unlabeled_prior(*bad)
    with pytest.raises(ValueError, match="unlabeled_prior"):
        sampled_prior(1, 1, 1.0)


def test_estimated_unlabeled_prior_hand_computed():
    # 12 candidates on annotated objects at f = 0.1: 108 expected on the unannotated ones
    assert estimated_unlabeled_prior(12, 300, 0.1) == pytest.approx(108 / 300, rel=1e-12)
    assert estimated_unlabeled_prior(12, 300, 1.0) == 0.0  # every object annotated
    assert estimated_unlabeled_prior(0, 300, 0.1) == 0.0  # no candidate on an object yet
    assert estimated_unlabeled_prior(40, 100, 0.1) == 1.0  # capped: every unlabeled candidate
    assert estimated_unlabeled_prior(5, 0, 0.1) == 0.0  # nothing unlabeled
    # it agrees with the fixed-share formula when the share among all candidates is q:
    # 1000 candidates, q = 0.06 -> 60 on objects, f = 0.1 -> 6 on annotations, 994 unlabeled
    assert estimated_unlabeled_prior(6, 994, 0.1) == pytest.approx(unlabeled_prior(0.1, 0.06))
    for bad in ((-1, 3, 0.1), (1, -3, 0.1), (1.5, 3, 0.1), (True, 3, 0.1)):
        with pytest.raises(ValueError, match="non-negative integer"):
            estimated_unlabeled_prior(*bad)
    with pytest.raises(ValueError, match="annotated_fraction"):
        estimated_unlabeled_prior(1, 3, 0.0)


@pytest.mark.parametrize("nonnegative", ["clamp", "none", "kiryo"])
def test_sampled_prior_is_the_fixed_prior_pi_b_of_the_batch(nonnegative):
    x, y = torch.tensor(X, dtype=torch.float64), torch.tensor(Y)
    pi_b = (2 + 3 * PI_U) / 5  # 0.46, by hand
    sampled = nnpu_loss(x, y, PI_U, prior_mode="sampled", nonnegative=nonnegative)
    fixed = nnpu_loss(x, y, pi_b, nonnegative=nonnegative)
    assert sampled.item() == pytest.approx(fixed.item(), rel=1e-12)


@pytest.mark.parametrize("nonnegative", ["clamp", "none"])
def test_sampled_prior_identity_ce_on_labelled_plus_classic_nnpu_on_unlabeled(nonnegative):
    """R = Np/N mean_P H(c, 1) + Nu/N [pi_u mean_P H(c, 1) + max(0, mean_U H(c, 0)
    - pi_u mean_P H(c, 0))], from the softplus values by hand."""
    h0 = [softplus(x) for x in X]
    h1 = [softplus(-x) for x in X]
    pos, unl = [0, 1], [2, 3, 4]
    mean_p_h1 = sum(h1[i] for i in pos) / 2
    negative = sum(h0[i] for i in unl) / 3 - PI_U * sum(h0[i] for i in pos) / 2
    if nonnegative == "clamp":
        negative = max(0.0, negative)
    expected = 2 / 5 * mean_p_h1 + 3 / 5 * (PI_U * mean_p_h1 + negative)
    got = nnpu_loss(
        torch.tensor(X, dtype=torch.float64),
        torch.tensor(Y),
        PI_U,
        prior_mode="sampled",
        nonnegative=nonnegative,
    )
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # the same through the library's classic mode
    classic = nnpu_loss(
        torch.tensor(X, dtype=torch.float64),
        torch.tensor(Y),
        PI_U,
        mode="classic",
        nonnegative=nonnegative,
    )
    assert got.item() == pytest.approx(2 / 5 * mean_p_h1 + 3 / 5 * classic.item(), rel=1e-12)


def test_sampled_prior_zero_is_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 2, 2, 1, 2, 2, 0, 2, 2])
    got = nnpu_loss(logits, labels, 0.0, prior_mode="sampled")
    want = torch.nn.functional.cross_entropy(logits, labels)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)


def test_sampled_prior_never_pulls_labelled_samples_toward_background():
    """Softmax (object, background): gradient descent on a labelled row lowers its background
    logit with the sampled prior; the paper's fixed pi 0.04 < Np/N = 0.4 raises it."""
    logits = torch.tensor(
        [[0.5, 0.0], [-0.3, 0.0], [0.2, 0.0], [-1.0, 0.0], [0.1, 0.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    labels = torch.tensor([0, 0, 1, 1, 1])  # rows 0, 1 labelled objects
    for prior, prior_mode, sign in ((PI_U, "sampled", 1.0), (0.04, "fixed", -1.0)):
        (grad,) = torch.autograd.grad(
            nnpu_loss(logits, labels, prior, prior_mode=prior_mode), logits
        )
        assert (sign * grad[:2, 1] > 0).all(), (prior_mode, grad)


def test_sampled_prior_edge_cases():
    x = torch.tensor([0.5, -1.0], dtype=torch.float64)
    # no labelled samples: pi_b = pi_u, the positive terms vanish: mean H(c, 0)
    only_unlabeled = nnpu_loss(x, torch.tensor([0, 0]), PI_U, prior_mode="sampled")
    assert only_unlabeled.item() == pytest.approx(softplus(0.5) / 2 + softplus(-1.0) / 2)
    # no unlabeled samples: pi_b = 1, cross-entropy of the positives
    only_labelled = nnpu_loss(x, torch.tensor([1, 1]), PI_U, prior_mode="sampled")
    assert only_labelled.item() == pytest.approx(softplus(-0.5) / 2 + softplus(1.0) / 2)
    empty = torch.zeros(0, 2, requires_grad=True)
    loss = nnpu_loss(empty, torch.zeros(0, dtype=torch.long), PI_U, prior_mode="sampled")
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(empty.grad).all()


def test_sigmoid_surrogate_hand_computed_and_bounded():
    """H(c, 0) = 1 - p(background) = sigmoid(x), H(c, 1) = sigmoid(-x): Kiryo et al.'s sigmoid
    loss."""

    def sig(v):
        return 1.0 / (1.0 + math.exp(-v))

    h0 = [sig(x) for x in X]
    h1 = [sig(-x) for x in X]
    positive = PI / 2 * (h1[0] + h1[1])
    negative = sum(h0) / 5 - PI / 2 * (h0[0] + h0[1])
    got = nnpu_loss(torch.tensor(X, dtype=torch.float64), torch.tensor(Y), PI, surrogate="sigmoid")
    assert got.item() == pytest.approx(positive + max(0.0, negative), rel=1e-12)
    # bounded: even for huge logits every term is at most 1, the risk at most 1 + pi
    big = torch.tensor([-1e4, 1e4, 1e4, 1e4], dtype=torch.float64)
    y = torch.tensor([1, 0, 0, 0])
    bounded = nnpu_loss(big, y, PI, surrogate="sigmoid")
    assert 0.0 <= bounded.item() <= 1.0 + PI
    assert nnpu_loss(big, y, PI).item() > 1e3  # the log loss is not


@pytest.mark.parametrize("nonnegative", ["clamp", "none", "kiryo"])
@pytest.mark.parametrize("prior_mode", ["fixed", "sampled"])
@pytest.mark.parametrize("surrogate", ["log", "sigmoid"])
def test_gradcheck_prior_modes_and_surrogates(nonnegative, prior_mode, surrogate):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 3, dtype=torch.float64, generator=g, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 2, 0, 2, 2])
    assert torch.autograd.gradcheck(
        lambda t: nnpu_loss(
            t,
            labels,
            0.2,
            nonnegative=nonnegative,
            prior_mode=prior_mode,
            surrogate=surrogate,
            beta=0.01,
            gamma=0.5,
        ),
        (x,),
    )
    # the hand-written backward equals autograd through the written-out risk (sigmoid logits)
    xs = torch.tensor(X, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(Y)
    got = torch.autograd.grad(
        nnpu_loss(xs, y, 0.2, prior_mode=prior_mode, surrogate=surrogate, nonnegative="none"), xs
    )[0]
    h0 = torch.sigmoid(xs) if surrogate == "sigmoid" else torch.nn.functional.softplus(xs)
    h1 = torch.sigmoid(-xs) if surrogate == "sigmoid" else torch.nn.functional.softplus(-xs)
    pi = (2 + 3 * 0.2) / 5 if prior_mode == "sampled" else 0.2
    risk = pi / 2 * h1[:2].sum() + h0.sum() / 5 - pi / 2 * h0[:2].sum()
    (want,) = torch.autograd.grad(risk, xs)
    torch.testing.assert_close(got, want)


def test_new_settings_errors_and_module():
    x, y = torch.zeros(2), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="prior_mode"):
        nnpu_loss(x, y, 0.1, prior_mode="auto")
    with pytest.raises(ValueError, match="surrogate"):
        nnpu_loss(x, y, 0.1, surrogate="hinge")
    with pytest.raises(ValueError, match="needs mode 'detection'"):
        nnpu_loss(x, y, 0.1, prior_mode="sampled", mode="classic")
    with pytest.raises(ValueError, match="prior"):
        nnpu_loss(x, y, 1.0, prior_mode="sampled")
    with pytest.raises(ValueError, match="prior"):
        NonNegativePULoss(prior=0.0)  # 0 only as a sampled pi_u
    module = NonNegativePULoss(prior=0.0, prior_mode="sampled", surrogate="sigmoid")
    logits = torch.randn(6, 2)
    labels = torch.tensor([0, 1, 1, 0, 1, 1])
    assert module(logits, labels).item() == pytest.approx(
        nnpu_loss(logits, labels, 0.0, prior_mode="sampled", surrogate="sigmoid").item()
    )
    assert "prior_mode='sampled'" in repr(module) and "surrogate='sigmoid'" in repr(module)
