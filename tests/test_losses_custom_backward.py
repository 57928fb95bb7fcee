"""The hand-written backwards of exclusive cross-entropy and nnPU against plain autograd.

Both losses compute their gradient in the forward (one log-softmax, no autograd graph) for
speed (tools/bench_losses.py). Here they are checked against straightforward autograd
implementations of the same equations, over every option, and with gradcheck in float64.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from sparse_ext.losses import exclusive_cross_entropy, nnpu_loss

# -- references: the equations written with autograd ops


def reference_ece(
    logits,
    target,
    annotated=None,
    rho=0.5,
    confidence="foreground",
    focal_alpha=None,
    focal_gamma=None,
    sample_prob=1.0,
    ignore_index=255,
    reduction="mean",
    use_sigmoid=False,
):
    """Panteli et al., ICCV 2021, Eq. 7/8, element by element."""
    if use_sigmoid:
        logits = torch.stack([torch.zeros_like(logits), logits], dim=1)
    log_p = F.log_softmax(logits, dim=1)
    ignored = target == ignore_index
    marked = ignored | (target != 0) if annotated is None else annotated | ignored
    class_target = torch.where(marked, target, torch.zeros_like(target))
    ce = F.nll_loss(log_p, class_target, ignore_index=ignore_index, reduction="none")
    p_bg = log_p[:, 0].exp()
    if confidence == "foreground":
        keep = 1 - p_bg < rho
    elif confidence == "margin":
        top2 = log_p.exp().topk(2, dim=1).values
        keep = top2[:, 0] - top2[:, 1] < rho
    else:
        top2 = logits.topk(2, dim=1).values
        keep = top2[:, 0] - top2[:, 1] <= rho
    if sample_prob < 1:
        keep = keep & (torch.rand(ce.shape) < sample_prob)
    unannotated_term = ce
    if focal_alpha is not None or focal_gamma is not None:
        alpha = 1.0 if focal_alpha is None else focal_alpha
        gamma = 0.0 if focal_gamma is None else focal_gamma
        unannotated_term = alpha * (-torch.expm1(-ce)).clamp_min(1e-12) ** gamma * ce
    per = torch.where(marked, ce, torch.where(keep, unannotated_term, torch.zeros_like(ce)))
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / (target != ignore_index).sum().clamp_min(1)


def reference_nnpu(logits, labels, prior, background_index=None, mode="detection", **kw):
    """Zhao et al., MICCAI 2021, Eq. 10-12 with Kiryo et al.'s correction, with autograd."""
    nonnegative = kw.get("nonnegative", "clamp")
    beta, gamma = kw.get("beta", 0.0), kw.get("gamma", 1.0)
    if logits.dim() == 1:
        h_neg, h_pos, pos = F.softplus(logits), F.softplus(-logits), labels == 1
    else:
        bg = logits.shape[1] - 1 if background_index is None else background_index
        log_p = F.log_softmax(logits, dim=1)
        h_neg, pos = -log_p[:, bg], labels != bg
        h_pos = -log_p.gather(1, labels[:, None])[:, 0]
    pos = pos.to(logits.dtype)
    n_pos = pos.sum().clamp_min(1)
    positive_risk = prior / n_pos * (h_pos * pos).sum()
    if mode == "detection":
        expected = h_neg.sum() / max(len(labels), 1)
    else:
        expected = (h_neg * (1 - pos)).sum() / (1 - pos).sum().clamp_min(1)
    negative_risk = expected - prior / n_pos * (h_neg * pos).sum()
    if nonnegative == "none":
        return positive_risk + negative_risk
    if nonnegative == "clamp":
        return positive_risk + negative_risk.clamp_min(0)
    defended = -gamma * negative_risk
    corrected = (positive_risk - beta).detach() + defended - defended.detach()
    return torch.where(negative_risk < -beta, corrected, positive_risk + negative_risk)


def ece_inputs(shape, classes, seed, ignore_index=255, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    n, spatial = shape[0], shape[1:]
    logits = 3 * torch.randn(n, classes, *spatial, generator=g, dtype=dtype)
    target = torch.randint(0, classes, (n, *spatial), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.5] = 0
    target[torch.rand(target.shape, generator=g) < 0.15] = ignore_index
    return logits, target


def value_and_grads(fn, logits, upstream=None):
    """(value, d value / d logits), the backward fed ``upstream(value)`` (default: ones)."""
    x = logits.detach().clone().requires_grad_()
    value = fn(x)
    seed = torch.ones_like(value) if upstream is None else upstream(value)
    (grad,) = torch.autograd.grad(value, x, seed)
    return value.detach(), grad


# -- exclusive cross-entropy


ECE_OPTIONS = [
    dict(rho=0.5),
    dict(rho=0.0),
    dict(rho=0.999, confidence="margin"),
    dict(rho=0.4, confidence="margin"),
    dict(rho=1.2, confidence="logit_margin"),
    dict(rho=0.0, confidence="logit_margin"),
    dict(rho=0.6, focal_alpha=0.25, focal_gamma=2.0),
    dict(rho=0.6, focal_alpha=0.5, focal_gamma=1.0),
    dict(rho=0.6, focal_alpha=0.5, focal_gamma=1.5),
    dict(rho=0.6, focal_alpha=0.75, focal_gamma=0.5),
    dict(rho=1.0, focal_alpha=0.3),  # gamma 0: a constant weight
    dict(rho=1.0, focal_gamma=2.0),  # alpha 1
    dict(rho=2.0, confidence="logit_margin", focal_alpha=0.2, focal_gamma=0.1),
]


@pytest.mark.parametrize("options", ECE_OPTIONS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("classes", [2, 3, 5])
def test_ece_equals_autograd_reference(options, reduction, classes):
    logits, target = ece_inputs((2, 5, 6), classes, seed=classes)
    for upstream_scale in (1.0, -2.5):  # 1: the backward hands its saved gradient over

        def upstream(v, s=upstream_scale):
            g = torch.Generator().manual_seed(7)
            return s * (torch.rand(v.shape, generator=g, dtype=v.dtype) if v.dim() else 1 + 0 * v)

        got = value_and_grads(
            lambda x: exclusive_cross_entropy(x, target, reduction=reduction, **options),
            logits,
            upstream,
        )
        want = value_and_grads(
            lambda x: reference_ece(x, target, reduction=reduction, **options), logits, upstream
        )
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "case",
    [
        "annotated_mask",
        "ignore_index_negative",
        "ignore_index_is_class_0",
        "ignore_index_is_class_1",
        "sigmoid",
        "sigmoid_annotated_mask",
        "classifier_2d",
        "volume_3d",
        "channels_last",
        "all_ignored",
        "no_annotation",
        "sampling",
    ],
)
@pytest.mark.parametrize("focal", [False, True])
def test_ece_layouts_masks_and_ignore_indices_equal_reference(case, focal):
    ignore_index = {"ignore_index_negative": -100, "ignore_index_is_class_0": 0}.get(case, 255)
    if case == "ignore_index_is_class_1":
        ignore_index = 1
    shape = {"classifier_2d": (40,), "volume_3d": (2, 3, 4, 5)}.get(case, (2, 5, 6))
    logits, target = ece_inputs(shape, 3, seed=11, ignore_index=ignore_index)
    kw = dict(rho=0.55, ignore_index=ignore_index)
    if focal:
        kw.update(focal_alpha=0.4, focal_gamma=2.0)
    if case in ("annotated_mask", "sigmoid_annotated_mask"):
        g = torch.Generator().manual_seed(3)
        kw["annotated"] = torch.rand(target.shape, generator=g) < 0.3
    if case.startswith("sigmoid"):
        logits = logits[:, 1]
        target = target.clamp(max=1).masked_fill(target == ignore_index, ignore_index)
        kw["use_sigmoid"] = True
    if case == "channels_last":
        logits = logits.contiguous(memory_format=torch.channels_last)
    if case == "all_ignored":
        target.fill_(ignore_index)
    if case == "no_annotation":
        target.zero_()
    if case == "sampling":
        kw["sample_prob"] = 0.5

    def ours(x):
        torch.manual_seed(0)
        return exclusive_cross_entropy(x, target, **kw)

    def reference(x):
        torch.manual_seed(0)
        return reference_ece(x, target, **kw)

    got = value_and_grads(ours, logits)
    want = value_and_grads(reference, logits)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "ignore_index, ignored_value, bad_value",
    [
        (255, 255, 7),
        (255, 255, 300),
        (-100, -100, -5),  # PyTorch's default ignore_index
        (1000, 1000, 4),
        (1000, None, 9),  # none ignored
        (255, None, -1),
    ],
)
def test_ece_target_check_and_count_on_every_path(ignore_index, ignored_value, bad_value):
    logits, target = ece_inputs((2, 5, 6), 3, seed=29, ignore_index=ignore_index)
    if ignored_value is None:
        target[target == ignore_index] = 0
    for kw in (dict(rho=0.5), dict(rho=0.5, focal_gamma=2.0), dict(rho=0.5, reduction="sum")):
        kw["ignore_index"] = ignore_index
        got = value_and_grads(lambda x, kw=kw: exclusive_cross_entropy(x, target, **kw), logits)
        want = value_and_grads(lambda x, kw=kw: reference_ece(x, target, **kw), logits)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        bad = target.clone()
        bad[1, 2, 3] = bad_value
        with pytest.raises(ValueError, match=rf"class indices in \[0, 3\).*{bad_value}"):
            exclusive_cross_entropy(logits, bad, **kw)


def test_ece_channels_last_input_keeps_its_values():
    logits, target = ece_inputs((2, 5, 6), 3, seed=5, dtype=torch.float32)
    cl = logits.contiguous(memory_format=torch.channels_last)
    for kw in (dict(rho=0.5), dict(rho=0.5, focal_alpha=0.5, focal_gamma=2.0)):
        got = value_and_grads(lambda x, kw=kw: exclusive_cross_entropy(x, target, **kw), cl)
        want = value_and_grads(lambda x, kw=kw: exclusive_cross_entropy(x, target, **kw), logits)
        torch.testing.assert_close(got, want)


GRADCHECK_CASES = [
    dict(rho=0.6),
    dict(rho=0.6, reduction="sum"),
    dict(rho=0.6, reduction="none"),
    dict(rho=0.45, confidence="margin"),
    dict(rho=1.0, confidence="logit_margin", reduction="none"),
    dict(rho=0.7, focal_alpha=0.25, focal_gamma=2.0),
    dict(rho=0.7, focal_alpha=0.25, focal_gamma=2.0, reduction="none"),
    dict(rho=0.7, focal_alpha=0.5, focal_gamma=1.0),
    dict(rho=0.7, focal_alpha=0.5, focal_gamma=0.5),
    dict(rho=0.7, focal_alpha=0.5, focal_gamma=3.5, reduction="sum"),
    dict(rho=1.0, focal_alpha=0.5),
    dict(rho=0.6, ignore_index=-100),
    dict(rho=0.6, ignore_index=0),
]


@pytest.mark.parametrize("kw", GRADCHECK_CASES)
def test_ece_gradcheck_float64(kw):
    logits, target = ece_inputs((2, 3, 3), 3, seed=13, ignore_index=kw.get("ignore_index", 255))
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: exclusive_cross_entropy(x, target, **kw), (logits,))


def test_ece_gradcheck_annotated_mask_sigmoid_and_classifier_float64():
    logits, target = ece_inputs((2, 3, 3), 3, seed=17)
    annotated = torch.rand(target.shape, generator=torch.Generator().manual_seed(1)) < 0.4
    x = logits.detach().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: exclusive_cross_entropy(t, target, annotated, rho=0.6, focal_gamma=2.0), (x,)
    )
    sig = logits[:, 1].detach().requires_grad_()
    binary = target.clamp(max=1).masked_fill(target == 255, 255)
    assert torch.autograd.gradcheck(
        lambda t: exclusive_cross_entropy(t, binary, rho=0.6, use_sigmoid=True), (sig,)
    )
    flat = logits.permute(0, 2, 3, 1).reshape(-1, 3).detach().requires_grad_()
    labels = target.reshape(-1)
    assert torch.autograd.gradcheck(
        lambda t: exclusive_cross_entropy(t, labels, rho=0.6, focal_alpha=0.5), (flat,)
    )


# -- the backward hands its saved gradient over when the upstream gradient is 1


@pytest.mark.parametrize(
    "loss",
    [
        lambda x, t: exclusive_cross_entropy(x, t, rho=0.5),
        lambda x, t: exclusive_cross_entropy(x, t, rho=0.5, focal_alpha=0.5, focal_gamma=2.0),
        lambda x, t: nnpu_loss(
            x.permute(0, 2, 3, 1).reshape(-1, 3), t.reshape(-1).clamp(max=2), 0.3
        ),
    ],
)
def test_backward_twice_accumulation_and_scaling(loss):
    logits, target = ece_inputs((2, 4, 4), 3, seed=19, dtype=torch.float32)
    x = logits.requires_grad_()
    (once,) = torch.autograd.grad(loss(x, target), x)

    value = loss(x, target)
    value.backward(retain_graph=True)
    first = x.grad.clone()
    x.grad.zero_()  # an optimizer's in-place change must not reach the retained graph
    value.backward()
    torch.testing.assert_close(first, once)
    torch.testing.assert_close(x.grad, once)

    x.grad = None
    (loss(x, target) + loss(x, target)).backward()  # one input, two uses: accumulated
    torch.testing.assert_close(x.grad, 2 * once)
    x.grad = None
    (0.25 * loss(x, target)).backward()
    torch.testing.assert_close(x.grad, 0.25 * once)


def test_no_gradient_is_computed_without_grad():
    logits, target = ece_inputs((2, 4, 4), 3, seed=23, dtype=torch.float32)
    with torch.no_grad():
        value = exclusive_cross_entropy(logits.requires_grad_(), target, rho=0.5)
    assert value.grad_fn is None
    assert exclusive_cross_entropy(logits.detach(), target, rho=0.5).grad_fn is None


# -- nnPU


NNPU_OPTIONS = [
    dict(mode=m, nonnegative=n, beta=b, gamma=g)
    for m, n, (b, g) in itertools.product(
        ("detection", "classic"), ("clamp", "none", "kiryo"), ((0.0, 1.0), (0.05, 0.4))
    )
    if n == "kiryo" or (b, g) == (0.0, 1.0)
]


def nnpu_inputs(n, classes, seed, prior_like=0.25, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    if classes == 1:
        logits = scale * torch.randn(n, generator=g, dtype=torch.float64)
        labels = (torch.rand(n, generator=g) < prior_like).long()
        return logits, labels
    logits = scale * torch.randn(n, classes, generator=g, dtype=torch.float64)
    labels = torch.full((n,), classes - 1)
    pos = torch.rand(n, generator=g) < prior_like
    labels[pos] = torch.randint(0, classes - 1, (int(pos.sum()),), generator=g)
    return logits, labels


@pytest.mark.parametrize("options", NNPU_OPTIONS)
@pytest.mark.parametrize("classes", [1, 2, 4])
@pytest.mark.parametrize("prior", [0.1, 0.9])  # 0.9: the negative risk goes below 0
def test_nnpu_equals_autograd_reference(options, classes, prior):
    for seed, n in ((0, 30), (1, 7)):
        logits, labels = nnpu_inputs(n, classes, seed)
        for scale in (1.0, 3.0):

            def upstream(v, scale=scale):
                return scale + 0 * v

            got = value_and_grads(
                lambda x, y=labels: nnpu_loss(x, y, prior, **options), logits, upstream
            )
            want = value_and_grads(
                lambda x, y=labels: reference_nnpu(x, y, prior, **options), logits, upstream
            )
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("background_index", [0, 1, -1])
def test_nnpu_background_column_equals_reference(background_index):
    logits, labels = nnpu_inputs(25, 3, seed=4)
    bg = background_index % 3
    labels = torch.where(labels == 2, bg, torch.where(labels == bg, 2, labels))
    for nonnegative in ("clamp", "kiryo"):
        kw = dict(background_index=bg, nonnegative=nonnegative)
        got = value_and_grads(lambda x, kw=kw: nnpu_loss(x, labels, 0.3, **kw), logits)
        want = value_and_grads(lambda x, kw=kw: reference_nnpu(x, labels, 0.3, **kw), logits)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    got_value = nnpu_loss(logits, labels, 0.3, background_index=background_index)
    torch.testing.assert_close(got_value, got[0])


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1], [2, 2, 2], [0, 1, 0]])
def test_nnpu_without_positives_or_unlabeled_equals_reference(labels):
    labels = torch.tensor(labels)
    logits = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for mode, nonnegative in itertools.product(("detection", "classic"), ("clamp", "none")):
        kw = dict(mode=mode, nonnegative=nonnegative)
        got = value_and_grads(lambda x, kw=kw: nnpu_loss(x, labels, 0.4, **kw), logits)
        want = value_and_grads(lambda x, kw=kw: reference_nnpu(x, labels, 0.4, **kw), logits)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("options", NNPU_OPTIONS)
@pytest.mark.parametrize("classes", [1, 3])
def test_nnpu_gradcheck_float64(options, classes):
    for prior in (0.2, 0.9):  # both sides of the non-negative correction
        logits, labels = nnpu_inputs(8, classes, seed=6)
        x = logits.requires_grad_()
        assert torch.autograd.gradcheck(
            lambda t, y=labels, p=prior: nnpu_loss(t, y, p, **options), (x,)
        )


def test_nnpu_kiryo_branch_is_taken_on_both_sides():
    logits, labels = nnpu_inputs(30, 3, seed=8)
    values = []
    for prior in (0.1, 0.95):
        loss = nnpu_loss(logits, labels, prior, nonnegative="kiryo", beta=0.0, gamma=0.5)
        unbiased = nnpu_loss(logits, labels, prior, nonnegative="none")
        values.append(math.isclose(loss.item(), unbiased.item(), rel_tol=1e-12))
    assert values == [True, False]  # the large prior is defended
