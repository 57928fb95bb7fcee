"""Exclusive cross-entropy (Panteli et al., ICCV 2021, Eq. 7/8): sparse_ext.losses."""

import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_ext.losses import (
    ConstantSchedule,
    ExclusiveCrossEntropy,
    LinearSchedule,
    beyond_exclusion_budget,
    exclusive_cross_entropy,
)
from sparse_ext.losses.demo import run_loss_demo


def logit(p):
    return math.log(p / (1 - p))


def two_class(fg_logits):
    """(N, *) foreground logits -> (N, 2, *) softmax logits with background logit 0."""
    fg = torch.as_tensor(fg_logits, dtype=torch.float64)
    return torch.stack([torch.zeros_like(fg), fg], dim=1)


def random_batch(n=2, c=3, h=5, w=6, seed=0, scale=2.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    target = torch.randint(0, c, (n, h, w), generator=g)
    target[torch.rand(n, h, w, generator=g) < 0.5] = 0  # many unannotated
    target[torch.rand(n, h, w, generator=g) < 0.1] = 255  # some ignored
    return logits.to(dtype), target


# -- hand-computed values of Eq. 7 and Eq. 8


# one annotated pixel (p_fg = 0.7) and unannotated pixels with p_fg = 0.2, 0.6, 0.9
FG = [[logit(0.7), logit(0.2), logit(0.6), logit(0.9)]]
TARGET = torch.tensor([[1, 0, 0, 0]])


@pytest.mark.parametrize(
    "rho, kept_unannotated",
    [(0.1, []), (0.5, [0.2]), (0.7, [0.2, 0.6]), (0.95, [0.2, 0.6, 0.9]), (1.0, [0.2, 0.6, 0.9])],
)
def test_eq7_foreground_confidence_hand_computed(rho, kept_unannotated):
    # L = -log p(annotated) - sum_{unannotated, p_fg < rho} log(1 - p_fg), mean over 4 pixels
    expected = (-math.log(0.7) - sum(math.log(1 - p) for p in kept_unannotated)) / 4
    got = exclusive_cross_entropy(two_class(FG), TARGET, rho=rho)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    sig = exclusive_cross_entropy(
        torch.tensor(FG, dtype=torch.float64), TARGET, rho=rho, use_sigmoid=True
    )
    assert sig.item() == pytest.approx(expected, rel=1e-12)


def test_eq8_focal_on_unannotated_terms_only_hand_computed():
    alpha, gamma, rho = 0.25, 2.0, 0.7
    # annotated: plain CE; kept unannotated (p_fg 0.2, 0.6): alpha * (1 - p_t)^gamma * CE,
    # p_t = p(bg) = 1 - p_fg
    terms = [-math.log(0.7)] + [alpha * p**gamma * -math.log(1 - p) for p in (0.2, 0.6)] + [0.0]
    got = exclusive_cross_entropy(
        two_class(FG), TARGET, rho=rho, focal_alpha=alpha, focal_gamma=gamma, reduction="none"
    )
    assert got[0].tolist() == pytest.approx(terms, rel=1e-12)


def test_multiclass_confidence_modes_hand_computed():
    # pixels: A, B, C unannotated, D annotated with class 2; logits = log(probabilities)
    probs = torch.tensor(
        [[0.5, 0.3, 0.2], [0.1, 0.45, 0.45], [0.7, 0.2, 0.1], [0.2, 0.2, 0.6]], dtype=torch.float64
    )
    logits = probs.log()  # (4, 3): (N, C) classification-shaped input
    target = torch.tensor([0, 0, 0, 2])

    def loss(**kw):
        return exclusive_cross_entropy(logits, target, reduction="sum", **kw).item()

    # foreground 1 - p0: A 0.5, B 0.9, C 0.3 -> rho 0.6 keeps A and C
    assert loss(rho=0.6) == pytest.approx(-math.log(0.5) - math.log(0.7) - math.log(0.6))
    # margin top1 - top2: A 0.2, B 0.0, C 0.5 -> rho 0.3 keeps A and B
    assert loss(rho=0.3, confidence="margin") == pytest.approx(
        -math.log(0.5) - math.log(0.1) - math.log(0.6)
    )
    # logit margin: A log(5/3) = 0.51, B 0, C log(3.5) = 1.25 -> rho 0.5 keeps B only
    assert loss(rho=0.5, confidence="logit_margin") == pytest.approx(-math.log(0.1) - math.log(0.6))


def test_logit_margin_keeps_equality_like_the_reference():
    # |x1 - x0| <= rho is kept (the reference's <=), > rho dropped; exact in binary floats
    logits = two_class([0.5, -0.5, 0.75, 0.0])
    target = torch.zeros(1, 4, dtype=torch.long).view(4)
    per = exclusive_cross_entropy(
        logits.view(4, 2), target, rho=0.5, confidence="logit_margin", reduction="none"
    )
    assert (per > 0).tolist() == [True, True, False, True]


def test_sigmoid_equals_softmax_with_zero_background_logit():
    g = torch.Generator().manual_seed(3)
    x = 3 * torch.randn(2, 1, 4, 5, generator=g, dtype=torch.float64)
    target = torch.randint(0, 2, (2, 4, 5), generator=g)
    target[0, 0] = 255
    for confidence, rho in [("foreground", 0.6), ("margin", 0.5), ("logit_margin", 1.5)]:
        for kw in ({}, {"focal_alpha": 0.5, "focal_gamma": 2.0}):
            sig = exclusive_cross_entropy(
                x, target, rho=rho, use_sigmoid=True, confidence=confidence, **kw
            )
            soft = exclusive_cross_entropy(
                torch.cat([torch.zeros_like(x), x], dim=1),
                target,
                rho=rho,
                confidence=confidence,
                **kw,
            )
            torch.testing.assert_close(sig, soft)
    # (N, *) and (N, 1, *) sigmoid logits are the same
    torch.testing.assert_close(
        exclusive_cross_entropy(x, target, rho=0.5, use_sigmoid=True),
        exclusive_cross_entropy(x[:, 0], target, rho=0.5, use_sigmoid=True),
    )


# -- identities and reductions


def test_rho_one_is_exactly_cross_entropy_with_ignored_pixels():
    logits, target = random_batch(seed=1)
    logits.requires_grad_()
    want = F.cross_entropy(logits, target, ignore_index=255)
    (want_grad,) = torch.autograd.grad(want, logits)
    for kw in ({"rho": 1.0}, {"rho": 1.0, "confidence": "margin"}):
        got = exclusive_cross_entropy(logits, target, **kw)
        assert torch.equal(got, want)
        (grad,) = torch.autograd.grad(got, logits)
        assert torch.equal(grad, want_grad)
    for reduction in ("sum", "none"):
        assert torch.equal(
            exclusive_cross_entropy(logits, target, reduction=reduction),
            F.cross_entropy(logits, target, ignore_index=255, reduction=reduction),
        )
    # through the masking path (rho < 1 that drops nothing): equal up to summation order
    almost = exclusive_cross_entropy(logits, target, rho=1 - 1e-12)
    torch.testing.assert_close(almost, want)


def test_reductions():
    logits, target = random_batch(seed=2)
    per = exclusive_cross_entropy(logits, target, rho=0.5, reduction="none")
    assert per.shape == target.shape
    assert (per[target == 255] == 0).all()
    dropped = (target == 0) & (1 - logits.softmax(1)[:, 0] >= 0.5)
    assert dropped.any() and (per[dropped] == 0).all()
    kept = ~dropped & (target != 255)
    ce = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    torch.testing.assert_close(per[kept], ce[kept])
    total = exclusive_cross_entropy(logits, target, rho=0.5, reduction="sum")
    torch.testing.assert_close(total, per.sum())
    mean = exclusive_cross_entropy(logits, target, rho=0.5)
    torch.testing.assert_close(mean, per.sum() / (target != 255).sum())


def test_focal_reweights_only_unannotated_terms():
    logits, target = random_batch(seed=4)
    alpha, gamma = 0.3, 1.5
    per = exclusive_cross_entropy(
        logits, target, rho=1.0, focal_alpha=alpha, focal_gamma=gamma, reduction="none"
    )
    ce = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    annotated = (target != 0) & (target != 255)
    torch.testing.assert_close(per[annotated], ce[annotated])
    un = target == 0
    torch.testing.assert_close(per[un], alpha * (1 - torch.exp(-ce[un])) ** gamma * ce[un])
    # only alpha given: gamma defaults to 0, a plain weight on the unannotated terms
    only_alpha = exclusive_cross_entropy(logits, target, rho=1.0, focal_alpha=0.5, reduction="none")
    torch.testing.assert_close(only_alpha[un], 0.5 * ce[un])


def test_sample_prob():
    logits, target = random_batch(n=4, c=2, h=32, w=32, seed=5)
    annotated_only = exclusive_cross_entropy(logits, target, rho=0.0, reduction="none")
    assert (annotated_only[target == 0] == 0).all()
    none_kept = exclusive_cross_entropy(logits, target, rho=1.0, sample_prob=0.0, reduction="none")
    assert torch.equal(none_kept, annotated_only)
    all_kept = exclusive_cross_entropy(logits, target, rho=0.7, sample_prob=1.0, reduction="none")
    assert torch.equal(all_kept, exclusive_cross_entropy(logits, target, rho=0.7, reduction="none"))
    torch.manual_seed(0)
    half = exclusive_cross_entropy(logits, target, rho=1.0, sample_prob=0.5, reduction="none")
    un = target == 0
    kept = (half[un] > 0).float().mean().item()
    assert 0.45 < kept < 0.55  # ~ 2000 unannotated pixels
    annotated = (target != 0) & (target != 255)
    ce = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    assert torch.equal(half[annotated], ce[annotated])  # annotated terms are never sampled out


def test_explicit_annotated_mask():
    logits, target = random_batch(seed=6)
    annotated = torch.rand(target.shape, generator=torch.Generator().manual_seed(1)) < 0.3
    got = exclusive_cross_entropy(logits, target, annotated, rho=0.6, reduction="none")
    # unannotated elements are background whatever their label; ignored stay ignored
    relabelled = torch.where(annotated | (target == 255), target, torch.zeros_like(target))
    want = exclusive_cross_entropy(logits, relabelled, annotated, rho=0.6, reduction="none")
    torch.testing.assert_close(got, want)
    default = exclusive_cross_entropy(logits, target, rho=0.6)
    explicit = exclusive_cross_entropy(logits, target, (target != 0) & (target != 255), rho=0.6)
    torch.testing.assert_close(default, explicit)
    # annotated background (annotated and target 0) is plain CE, never dropped
    confident = two_class([[logit(0.99)]])
    zero = torch.zeros(1, 1, dtype=torch.long)
    assert exclusive_cross_entropy(confident, zero, torch.ones(1, 1, dtype=torch.bool), 0.1) > 4
    assert exclusive_cross_entropy(confident, zero, None, 0.1) == 0


# -- gradients


@pytest.mark.parametrize(
    "kw",
    [
        dict(rho=0.6),
        dict(rho=0.4, confidence="margin"),
        dict(rho=1.5, confidence="logit_margin"),
        dict(rho=0.7, focal_alpha=0.25, focal_gamma=2.0),
        dict(rho=0.7, focal_alpha=0.5, focal_gamma=0.5),
        dict(rho=0.6, reduction="none"),
    ],
)
def test_gradcheck_float64(kw):
    logits, target = random_batch(n=2, c=3, h=3, w=4, seed=7, dtype=torch.float64)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: exclusive_cross_entropy(x, target, **kw), (logits,))


def test_gradcheck_sigmoid_float64():
    g = torch.Generator().manual_seed(8)
    x = (2 * torch.randn(2, 1, 3, 4, generator=g, dtype=torch.float64)).requires_grad_()
    target = torch.randint(0, 2, (2, 3, 4), generator=g)
    target[0, 0, 0] = 255
    assert torch.autograd.gradcheck(
        lambda x: exclusive_cross_entropy(
            x, target, rho=0.6, use_sigmoid=True, focal_alpha=0.5, focal_gamma=2.0
        ),
        (x,),
    )


def test_dropped_terms_get_no_gradient():
    logits = two_class(FG).requires_grad_()
    exclusive_cross_entropy(logits, TARGET, rho=0.5).backward()
    grad = logits.grad[0].abs().sum(dim=0)  # per pixel
    assert grad[0] > 0 and grad[1] > 0  # annotated and the kept unannotated pixel
    assert grad[2] == 0 and grad[3] == 0  # too confident: excluded


# -- parity with the reference implementation (ece-loss 1.0.0)


@pytest.mark.parametrize("c", [2, 4])
@pytest.mark.parametrize("rho", [0.1, 0.5, 1.0, 2.5])
@pytest.mark.parametrize("focal", [False, True])
def test_parity_with_reference_package(c, rho, focal):
    ece_loss = pytest.importorskip("ece_loss")
    # Exclusivity threshold fixed at rho; background sampling off: its threshold 1.0 keeps
    # every unannotated term (uniform [0, 1) samples <= 1). The package always focal-reweights
    # the unannotated terms (default alpha 0.2, gamma 0.1); (1, 0) makes that the identity.
    params = (0.2, 0.1) if focal else (1.0, 0.0)
    reference = ece_loss.ExclusiveCrossEntropyLoss(
        ignore_index=255,
        exclusivity_threshold_annealing=lambda epoch, threshold: rho,
        background_sampling_annealing=lambda epoch, threshold: 1.0,
        focal_loss_parameters=params,
    )
    focal_kw = dict(focal_alpha=params[0], focal_gamma=params[1]) if focal else {}
    for seed in range(3):
        logits, target = random_batch(n=2, c=c, h=8, w=8, seed=seed, scale=2.0)
        logits.requires_grad_()
        want = reference(logits, target)
        got = exclusive_cross_entropy(
            logits, target, rho=rho, confidence="logit_margin", reduction="none", **focal_kw
        )
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)
        (g_want,) = torch.autograd.grad(want.sum(), logits)
        (g_got,) = torch.autograd.grad(got.sum(), logits)
        torch.testing.assert_close(g_got, g_want, rtol=1e-6, atol=1e-12)


# -- robustness: no NaN/inf for finite logits of any scale and any mask pattern


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    log_scale=st.floats(-3, 4),  # logits up to ~1e4
    c=st.integers(1, 4),  # 1 = sigmoid
    pattern=st.sampled_from(["random", "all_annotated", "none_annotated", "all_ignored"]),
    confidence=st.sampled_from(["foreground", "margin", "logit_margin"]),
    rho=st.sampled_from([0.0, 0.3, 0.5, 1.0, 2.0]),
    focal=st.booleans(),
    sample_prob=st.sampled_from([0.0, 0.5, 1.0]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
)
def test_finite_for_any_scale_and_mask_pattern(
    seed, log_scale, c, pattern, confidence, rho, focal, sample_prob, reduction, dtype
):
    if confidence != "logit_margin":
        rho = min(rho, 1.0)  # a probability threshold
    g = torch.Generator().manual_seed(seed)
    sigmoid = c == 1
    classes = 2 if sigmoid else c
    shape = (2, c, 3, 4)
    x = (10**log_scale * torch.randn(shape, generator=g)).to(dtype).requires_grad_()
    target = torch.randint(0, classes, (2, 3, 4), generator=g)
    if pattern == "all_annotated":
        target = torch.randint(1, classes, (2, 3, 4), generator=g)
    elif pattern == "none_annotated":
        target.zero_()
    elif pattern == "all_ignored":
        target.fill_(255)
    else:
        target[torch.rand(2, 3, 4, generator=g) < 0.2] = 255
    loss = exclusive_cross_entropy(
        x,
        target,
        rho=rho,
        use_sigmoid=sigmoid,
        confidence=confidence,
        focal_alpha=0.25 if focal else None,
        focal_gamma=2.0 if focal else None,
        sample_prob=sample_prob,
        reduction=reduction,
    )
    assert loss.dtype == (torch.float32 if dtype != torch.float64 else dtype)
    assert torch.isfinite(loss).all()
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(grad).all()
    if pattern == "all_ignored":
        assert (loss == 0).all() and (grad == 0).all()


@pytest.mark.parametrize("kw", [dict(rho=1.0), dict(rho=0.5), dict(rho=0.5, use_sigmoid=True)])
def test_all_ignored_mean_is_zero_with_grad_fn(kw):
    c = 1 if kw.get("use_sigmoid") else 3
    logits = torch.randn(2, c, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), 255)
    loss = exclusive_cross_entropy(logits, target, **kw)
    assert loss.item() == 0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_half_precision_inputs_are_computed_in_float32():
    logits, target = random_batch(seed=9, scale=50.0)
    for dtype in (torch.float16, torch.bfloat16):
        low = logits.to(dtype).requires_grad_()
        got = exclusive_cross_entropy(low, target, rho=0.5, reduction="sum")
        assert got.dtype == torch.float32 and torch.isfinite(got)
        want = exclusive_cross_entropy(low.detach().float(), target, rho=0.5, reduction="sum")
        torch.testing.assert_close(got, want)
        got.backward()
        assert low.grad.dtype == dtype and torch.isfinite(low.grad).all()


def test_empty_batch():
    logits = torch.zeros(0, 2, 4, 4, requires_grad=True)
    loss = exclusive_cross_entropy(logits, torch.zeros(0, 4, 4, dtype=torch.long), rho=0.5)
    assert loss.item() == 0 and loss.grad_fn is not None


# -- clear errors


def test_errors():
    logits, target = random_batch()
    with pytest.raises(ValueError, match="do not match"):
        exclusive_cross_entropy(logits, target[:, :3])
    with pytest.raises(ValueError, match="C >= 2"):
        exclusive_cross_entropy(logits[:, :1], target)
    with pytest.raises(ValueError, match=r"\(N, 1, \*\)"):
        exclusive_cross_entropy(logits, target, use_sigmoid=True)
    with pytest.raises(ValueError, match="unknown confidence 'entropy'.*foreground"):
        exclusive_cross_entropy(logits, target, confidence="entropy")
    with pytest.raises(ValueError, match="unknown reduction 'avg'.*mean"):
        exclusive_cross_entropy(logits, target, reduction="avg")
    with pytest.raises(ValueError, match="integer class indices"):
        exclusive_cross_entropy(logits, target.float())
    with pytest.raises(ValueError, match="floating-point"):
        exclusive_cross_entropy(logits.long(), target)
    with pytest.raises(ValueError, match="annotated"):
        exclusive_cross_entropy(logits, target, target[:1] != 0)
    with pytest.raises(ValueError, match="bool mask"):
        exclusive_cross_entropy(logits, target, (target != 0).float())
    with pytest.raises(ValueError, match="sample_prob"):
        exclusive_cross_entropy(logits, target, sample_prob=1.5)
    with pytest.raises(ValueError, match=r"rho must be in \[0, 1\], got nan"):
        exclusive_cross_entropy(logits, target, rho=float("nan"))
    with pytest.raises(ValueError, match="focal_gamma"):
        exclusive_cross_entropy(logits, target, focal_gamma=-1.0)
    bad = target.clone()
    bad[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        exclusive_cross_entropy(logits, bad, rho=0.5)
    with pytest.raises(ValueError, match=r"target values \[2\] are not 0, 1"):
        exclusive_cross_entropy(logits[:, 0], target.clamp(max=2), use_sigmoid=True)


# -- the module


def test_module_schedule_progress_and_forward():
    logits, target = random_batch(seed=10)
    module = ExclusiveCrossEntropy()
    assert module.schedule == ConstantSchedule(0.5) and module.rho == 0.5
    torch.testing.assert_close(
        module(logits, target), exclusive_cross_entropy(logits, target, rho=0.5)
    )

    module = ExclusiveCrossEntropy(
        "paper_table2", confidence="margin", focal_alpha=0.5, focal_gamma=1.0
    )
    assert module.rho == 0.5
    module.set_progress(1 / 12)
    assert module.rho == pytest.approx(1 / (1 + math.exp(-0.375)))
    module.set_progress(5.0)  # clamped
    assert module.progress == 1.0 and module.rho == pytest.approx(1 / (1 + math.exp(-0.75)))
    want = exclusive_cross_entropy(
        logits, target, rho=module.rho, confidence="margin", focal_alpha=0.5, focal_gamma=1.0
    )
    torch.testing.assert_close(module(logits, target), want)
    # per-call overrides (MMSeg passes ignore_index, pixel samplers need "none")
    per = module(logits, target, ignore_index=255, reduction="none")
    assert per.shape == target.shape


def test_module_sampling_schedule():
    module = ExclusiveCrossEntropy(LinearSchedule(0.2, 1.0), sampling_schedule="reference_sampling")
    module.set_progress(0.5)
    assert module.rho == pytest.approx(0.6) and module.sample_prob == pytest.approx(0.25)
    assert ExclusiveCrossEntropy().sample_prob == 1.0
    logits, target = random_batch(seed=11)
    module.set_progress(0.0)  # keep probability ~1.5e-7: only annotated terms survive
    torch.testing.assert_close(
        module(logits, target, reduction="sum"),
        exclusive_cross_entropy(logits, target, rho=0.0, reduction="sum"),
    )


def test_module_options_are_validated_picklable_and_readable():
    with pytest.raises(ValueError, match="unknown confidence"):
        ExclusiveCrossEntropy(confidence="entropy")
    with pytest.raises(ValueError, match="unknown schedule name"):
        ExclusiveCrossEntropy("cosine")
    module = ExclusiveCrossEntropy({"type": "linear", "start": 0.3, "end": 0.9}, use_sigmoid=True)
    module.set_progress(0.5)
    copy = pickle.loads(pickle.dumps(module))
    assert copy.rho == pytest.approx(0.6) and copy.use_sigmoid
    assert "LinearSchedule(start=0.3, end=0.9)" in repr(module)


def test_loss_demo_runs(capsys):
    values = run_loss_demo(seed=0)
    out = capsys.readouterr().out
    assert "ECE, rho = 0.5" in out and "CE, sparse labels" in out
    # ECE leaves confident unannotated cells out: lower than sparse CE, rho = 1 is CE
    sparse_ce = values["CE, sparse labels (unannotated = background)"]
    assert values["ECE, rho = 0.5"] < sparse_ce
    assert values["ECE, rho = 1"] == pytest.approx(sparse_ce)
    assert values["excluded unannotated object pixels (rho 0.5)"] > 0.5


# -- the annotated fraction f sets the keep probability (background_keep_prob) ----------------------


@pytest.mark.parametrize(
    "f, expected",
    [(0.1, 0.25 * 0.1 / 0.9), (0.3, 0.25 * 0.3 / 0.7), (0.5, 0.25), (0.9, 1.0), (1.0, 1.0)],
)
def test_background_keep_prob_hand_values(f, expected):
    from sparse_ext.losses import background_keep_prob

    assert background_keep_prob(f) == pytest.approx(expected)


def test_background_keep_prob_puts_the_optimum_of_an_object_element_at_one_over_one_plus_c():
    """Expected loss of one true object element: annotated with probability f (-log p), else
    tentative background kept with probability s (-log(1 - p)); its minimiser is 1 / (1 + c)."""
    from sparse_ext.losses import background_keep_prob

    p = torch.linspace(1e-4, 1 - 1e-4, 100001, dtype=torch.float64)
    for f in (0.1, 0.3, 0.5):
        s = background_keep_prob(f, margin=0.25)
        expected_loss = -f * torch.log(p) - (1 - f) * s * torch.log1p(-p)
        assert float(p[expected_loss.argmin()]) == pytest.approx(0.8, abs=1e-3)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_annotated_fraction_out_of_range_is_named(bad):
    from sparse_ext.losses import background_keep_prob

    with pytest.raises(ValueError, match=r"annotated_fraction must be in \(0, 1\]"):
        background_keep_prob(bad)
    with pytest.raises(ValueError, match="annotated_fraction"):
        ExclusiveCrossEntropy(annotated_fraction=bad)


def test_annotated_fraction_sets_the_sampling_of_the_function_and_the_module():
    from sparse_ext.losses import background_keep_prob

    logits = torch.randn(2, 2, 16, 16)
    target = (torch.rand(2, 16, 16) < 0.2).long()
    torch.manual_seed(3)
    by_fraction = exclusive_cross_entropy(logits, target, rho=0.5, annotated_fraction=0.3)
    torch.manual_seed(3)
    by_prob = exclusive_cross_entropy(
        logits, target, rho=0.5, sample_prob=background_keep_prob(0.3)
    )
    torch.manual_seed(3)
    unsampled = exclusive_cross_entropy(logits, target, rho=0.5)
    assert torch.equal(by_fraction, by_prob) and not torch.equal(by_fraction, unsampled)

    module = ExclusiveCrossEntropy(0.5)
    assert module.sample_prob == 1.0 and module.annotated_fraction is None  # as published
    module.set_annotated_fraction(0.3)
    assert module.sample_prob == pytest.approx(0.25 * 0.3 / 0.7)
    torch.manual_seed(3)
    assert torch.equal(module(logits, target), by_fraction)
    explicit = ExclusiveCrossEntropy(0.5, sampling_schedule=1.0, annotated_fraction=0.3)
    assert explicit.sample_prob == 1.0  # an explicit sampling schedule wins
    assert ExclusiveCrossEntropy(0.5, annotated_fraction=1.0).sample_prob == 1.0


# -- the annotated fraction checked against the labelled data (Elkan and Noto, KDD 2008) ------------


def test_label_frequency_estimate_hand_values():
    """|L cap S| / |S| with S = the scores >= the median labelled score, counts summed over
    batches (Bekker and Davis, AAAI 2018)."""
    from sparse_ext.losses.fraction import LabelFrequencyEstimate

    est = LabelFrequencyEstimate()
    assert est.value is None and est.updates == 0
    # labelled scores 0.9, 0.7, 0.2: median 0.7; S = {0.9, 0.7, 0.8, 0.75}: 2 labelled of 4
    scores = torch.tensor([0.9, 0.7, 0.2, 0.8, 0.75, 0.1, 0.3])
    labelled = torch.tensor([1, 1, 1, 0, 0, 0, 0], dtype=torch.bool)
    est.update(scores, labelled)
    assert est.value == pytest.approx(2 / 4) and est.updates == 1
    # second batch: labelled 0.6 only; S = {0.6, 0.65}: 1 of 2; total 3 of 6
    est.update(torch.tensor([[0.6, 0.65], [0.1, 0.5]]), torch.tensor([[1, 0], [0, 0]]).bool())
    assert est.value == pytest.approx(3 / 6) and est.updates == 2
    est.update(torch.rand(5), torch.zeros(5, dtype=torch.bool))  # nothing labelled: no change
    assert est.updates == 2
    with pytest.raises(ValueError, match="scores .* and labelled .* differ"):
        est.update(torch.rand(5), torch.zeros(4, dtype=torch.bool))
    est.reset()
    assert est.value is None and est.updates == 0


def test_label_frequency_estimate_is_exact_for_a_model_that_ranks_objects_first():
    """Objects scored above background, labelled and unlabelled alike (any calibration): the
    estimate is the labelled share of the objects above the labelled median."""
    from sparse_ext.losses.fraction import LabelFrequencyEstimate

    gen = torch.Generator().manual_seed(0)
    for f in (0.1, 0.3, 0.5):
        objects = 0.6 + 0.3 * torch.rand(20000, generator=gen)  # any monotone calibration
        background = 0.5 * torch.rand(60000, generator=gen)
        labelled_objects = torch.rand(20000, generator=gen) < f
        est = LabelFrequencyEstimate()
        est.update(
            torch.cat([objects, background]),
            torch.cat([labelled_objects, torch.zeros(60000, dtype=torch.bool)]),
        )
        assert est.value == pytest.approx(f, abs=0.02)


@pytest.mark.parametrize(
    "given, estimate, expected",
    [
        (0.6, 0.25, 0.25),  # told 2.4x the estimate: replaced
        (0.3, 0.25, 0.3),  # within 1.5x: kept
        (0.375, 0.25, 0.375),  # exactly 1.5x: kept
        (0.15, 0.3, 0.15),  # an under-estimate is never raised
        (0.6, None, 0.6),  # nothing seen
        (0.6, 0.0, 0.6),  # no evidence of any object
    ],
)
def test_checked_fraction_only_lowers_a_clear_over_estimate(given, estimate, expected):
    from sparse_ext.losses.fraction import checked_fraction

    assert checked_fraction(given, estimate) == pytest.approx(expected)


def test_checked_fraction_settings_are_named():
    from sparse_ext.losses.fraction import checked_fraction

    with pytest.raises(ValueError, match="tolerance"):
        checked_fraction(0.3, 0.2, tolerance=0.5)
    with pytest.raises(ValueError, match="estimate"):
        checked_fraction(0.3, 1.5)
    with pytest.raises(ValueError, match="annotated_fraction"):
        checked_fraction(0.0, 0.2)


def test_ece_module_estimates_f_in_the_warm_up_window_only_and_applies_the_check():
    """The module feeds the estimate from FRACTION_ESTIMATE_START to FRACTION_ESTIMATE_END of
    training while rho excludes nothing, in training only; the check moves its keep
    probability."""
    from sparse_ext.losses import background_keep_prob
    from sparse_ext.losses.fraction import (
        FRACTION_ESTIMATE_END,
        FRACTION_ESTIMATE_START,
        LabelFrequencyEstimate,
    )

    logits = torch.randn(2, 2, 8, 8)
    target = (torch.rand(2, 8, 8) < 0.3).long()
    target[0, 0, 0] = 255  # ignored: not counted
    module = ExclusiveCrossEntropy("ce_warmup", annotated_fraction=0.6)
    module(logits, target)
    assert module.fraction_estimate.updates == 0  # before the window
    module.set_progress(FRACTION_ESTIMATE_START)
    module(logits, target)
    valid = target != 255
    expected = LabelFrequencyEstimate()
    expected.update((1 - torch.softmax(logits, 1)[:, 0])[valid], (target == 1)[valid])
    assert module.fraction_estimate.value == pytest.approx(expected.value)
    with torch.no_grad():  # evaluation: no update
        module(logits, target)
    assert module.fraction_estimate.updates == 1
    module.set_progress(FRACTION_ESTIMATE_END)
    module(logits, target)
    assert module.fraction_estimate.updates == 1 and not module.estimating
    excluding = ExclusiveCrossEntropy(0.5)
    excluding.set_progress(FRACTION_ESTIMATE_START)
    assert not excluding.estimating  # rho 0.5 excludes: scores are not comparable

    assert module.check_annotated_fraction(0.2) == pytest.approx(0.2)
    assert module.sample_prob == pytest.approx(background_keep_prob(0.2))
    assert "checked_fraction=0.2" in repr(module)
    module.set_annotated_fraction(0.25)  # a later f is checked again
    assert module.check_annotated_fraction(0.2) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="no annotated_fraction"):
        ExclusiveCrossEntropy(0.5).check_annotated_fraction(0.2)


def test_ece_module_estimate_with_sigmoid_logits_and_an_annotated_mask():
    from sparse_ext.losses.fraction import FRACTION_ESTIMATE_START, LabelFrequencyEstimate

    logits = torch.randn(2, 1, 6, 6)
    target = (torch.rand(2, 6, 6) < 0.4).long()
    annotated = torch.rand(2, 6, 6) < 0.5
    module = ExclusiveCrossEntropy(1.0, use_sigmoid=True, annotated_fraction=1.0)
    module.set_progress(FRACTION_ESTIMATE_START)
    module(logits, target, annotated)
    expected = LabelFrequencyEstimate()
    expected.update(torch.sigmoid(logits[:, 0]), (target == 1) & annotated)
    assert module.fraction_estimate.value == pytest.approx(expected.value)


def test_ece_module_caps_f_until_the_check():
    """While a check is pending, f is capped at UNCHECKED_FRACTION_CEILING; the check ends it."""
    from sparse_ext.losses import background_keep_prob
    from sparse_ext.losses.fraction import UNCHECKED_FRACTION_CEILING

    module = ExclusiveCrossEntropy(1.0, annotated_fraction=0.6)
    assert module.sample_prob == pytest.approx(background_keep_prob(0.6))
    module.fraction_check_pending = True
    assert module.sample_prob == pytest.approx(background_keep_prob(UNCHECKED_FRACTION_CEILING))
    module.check_annotated_fraction(0.5)  # consistent with 0.6: kept
    assert not module.fraction_check_pending
    assert module.sample_prob == pytest.approx(background_keep_prob(0.6))
    small = ExclusiveCrossEntropy(1.0, annotated_fraction=0.1)
    small.fraction_check_pending = True
    assert small.sample_prob == pytest.approx(background_keep_prob(0.1))  # below the cap


# -- the exclusion budget (a guard against the all-foreground collapse, not in the paper)


def test_beyond_exclusion_budget_hand_computed():
    fg = torch.tensor([0.9, 0.8, 0.7, 0.2, 0.95, 0.6])
    unannotated = torch.tensor([1, 1, 1, 1, 0, 1], dtype=torch.bool)
    # 5 unannotated, 4 pass rho 0.5 (0.9, 0.8, 0.7, 0.6); budget 0.25: k = ceil(1.25) = 2 stay
    # excluded (0.9, 0.8), the other two are kept as background; the annotated 0.95 never counts
    beyond = beyond_exclusion_budget(fg, unannotated, 0.5, 0.25)
    assert beyond.tolist() == [False, False, True, False, False, True]
    assert not beyond_exclusion_budget(fg, unannotated, 0.5, 0.8).any()  # k = 4: all fit
    assert not beyond_exclusion_budget(fg, unannotated, 0.5, 1.0).any()
    zero = beyond_exclusion_budget(fg, unannotated, 0.5, 0.0)  # k = 0: nothing excluded
    assert zero.tolist() == [True, True, True, False, False, True]
    assert beyond_exclusion_budget(fg.view(2, 3), unannotated.view(2, 3), 0.5, 0.25).shape == (2, 3)
    with pytest.raises(ValueError, match="budget"):
        beyond_exclusion_budget(fg, unannotated, 0.5, 1.5)
    with pytest.raises(ValueError, match="same shape"):
        beyond_exclusion_budget(fg, unannotated[:3], 0.5, 0.5)


@pytest.mark.parametrize("use_sigmoid", [False, True])
def test_module_exclusion_budget_keeps_the_excess_as_background(use_sigmoid):
    # unannotated p_fg 0.2, 0.6, 0.9, 0.8 and one annotated 0.7; rho 0.5, budget 0.25: k = 1,
    # only 0.9 stays excluded, 0.6 and 0.8 are pulled to the background like 0.2
    probs = [0.7, 0.2, 0.6, 0.9, 0.8]
    target = torch.tensor([[1, 0, 0, 0, 0]])
    fg = [[logit(p) for p in probs]]
    logits = torch.tensor(fg, dtype=torch.float64) if use_sigmoid else two_class(fg)
    logits.requires_grad_(True)
    module = ExclusiveCrossEntropy(0.5, exclusion_budget=0.25, use_sigmoid=use_sigmoid)
    loss = module(logits, target)
    expected = (-math.log(0.7) - sum(math.log(1 - p) for p in (0.2, 0.6, 0.8))) / 5
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    grad = logits.grad if use_sigmoid else logits.grad[:, 1]
    assert grad[0, 3] == 0 and (grad[0, [1, 2, 4]] > 0).all()  # 0.9 excluded, the rest pushed
    unbounded = ExclusiveCrossEntropy(0.5, use_sigmoid=use_sigmoid)(logits, target)
    assert ExclusiveCrossEntropy(0.5, exclusion_budget=1.0, use_sigmoid=use_sigmoid)(
        logits, target
    ).item() == pytest.approx(unbounded.item(), rel=1e-12)
    # an explicit annotated mask: unannotated labels are background whatever their value
    marked = torch.tensor([[True, False, False, False, False]])
    relabelled = torch.tensor([[1, 1, 0, 1, 1]])
    assert module(logits, relabelled, marked).item() == pytest.approx(expected, rel=1e-12)
    # a per-call budget (a per-batch estimate) overrides the module's: the same loss as a module
    # built with it, and 1 restores the unbounded loss
    free = ExclusiveCrossEntropy(0.5, use_sigmoid=use_sigmoid)
    assert free(logits, target, exclusion_budget=0.25).item() == pytest.approx(expected, rel=1e-12)
    assert module(logits, target, exclusion_budget=1.0).item() == pytest.approx(
        unbounded.item(), rel=1e-12
    )


def test_module_exclusion_budget_is_validated_and_shown():
    with pytest.raises(ValueError, match="exclusion_budget"):
        ExclusiveCrossEntropy(exclusion_budget=-0.1)
    with pytest.raises(ValueError, match="needs confidence 'foreground'"):
        ExclusiveCrossEntropy(confidence="margin", exclusion_budget=0.1)
    x, y = torch.zeros(2, 2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="exclusion_budget"):
        ExclusiveCrossEntropy()(x, y, exclusion_budget=1.5)
    with pytest.raises(ValueError, match="needs confidence 'foreground'"):
        ExclusiveCrossEntropy(confidence="margin")(x, y, exclusion_budget=0.1)
    module = ExclusiveCrossEntropy(exclusion_budget=0.05)
    assert "exclusion_budget=0.05" in repr(pickle.loads(pickle.dumps(module)))


def test_budget_among_excludable_keeps_the_number_of_exclusions():
    from sparse_ext.losses import budget_among_excludable

    # 12 unannotated, budget 0.25: 3 exclusions; 4 kept leave 8 excludable, 3 / 8 of them
    assert budget_among_excludable(0.25, 12, 4) == pytest.approx(3 / 8)
    assert budget_among_excludable(0.25, 12, 0) == pytest.approx(0.25)
    assert budget_among_excludable(0.9, 10, 5) == 1.0  # more objects than excludable elements
    assert budget_among_excludable(0.5, 6, 6) == 0.0  # nothing may be excluded
    assert budget_among_excludable(0.5, 0, 0) == 0.0
    with pytest.raises(ValueError, match="kept must be in"):
        budget_among_excludable(0.5, 3, 4)
    with pytest.raises(ValueError, match="budget"):
        budget_among_excludable(1.5, 3, 1)
