"""Every scalar setting of the losses is checked: one ValueError that names the setting and its
range, raised by the functions on every call and by the modules when they are built."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from sparse_ext.losses import (
    ExclusiveCrossEntropy,
    LabelSuperResolutionLoss,
    NonNegativePULoss,
    barrier_t,
    bde_weights,
    exclusive_cross_entropy,
    extended_log_barrier,
    localizer_mask,
    lsr_loss,
    maxmin_objective,
    nnpu_loss,
    size_barrier,
    soft_mask,
    wildcat_pool,
)
from sparse_ext.losses._validate import (
    check_choice,
    check_finite,
    check_open_unit,
    check_positive,
    check_range,
    check_schedule,
)
from sparse_ext.losses.schedules import LinearSchedule


def raises_named(setting: str, interval: str | None = None):
    """pytest.raises for a ValueError whose message starts with the setting's name."""
    pattern = "^" + re.escape(setting) + " must be"
    if interval is not None:
        pattern += " " + re.escape(interval)
    return pytest.raises(ValueError, match=pattern)


def ece_batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, generator=g)
    target = torch.randint(0, 3, (2, 4, 4), generator=g)
    return logits, target


# -- the helpers


@pytest.mark.parametrize(
    "kwargs, value, message",
    [
        (dict(low=0.0, high=1.0), 1.5, "x must be in [0, 1], got 1.5"),
        (dict(low=0.0, high=1.0, low_open=True, high_open=True), 1.0, "x must be in (0, 1), got 1"),
        (dict(low=0.0, low_open=True), 0.0, "x must be a finite number > 0, got 0"),
        (dict(low=1.0), 0.5, "x must be a finite number >= 1, got 0.5"),
        (dict(high=2.0), 3.0, "x must be a finite number <= 2, got 3"),
        (dict(low=0.0, high=1.0), float("nan"), "x must be in [0, 1], got nan"),
        (dict(low=0.0), float("inf"), "x must be a finite number >= 0, got inf"),
        (dict(low=0.0, high=1.0), "0.5", "x must be a number in [0, 1], got '0.5'"),
        (dict(low=0.0, high=1.0), True, "x must be a number in [0, 1], got True"),
        (dict(low=0.0, high=1.0), None, "x must be a number in [0, 1], got None"),
        (dict(low=0.0), [1.0], "x must be a finite number >= 0, got [1.0]"),
    ],
)
def test_check_range_messages(kwargs, value, message):
    with pytest.raises(ValueError) as error:
        check_range("x", value, **kwargs)
    assert str(error.value) == message


def test_check_range_accepts_numbers_of_any_kind_and_returns_floats():
    for value in (0.5, 1, np.float32(0.5), np.int64(1), torch.tensor(0.25)):
        got = check_range("x", value, 0.0, 1.0)
        assert isinstance(got, float) and got == float(value)
    assert check_open_unit("p", 0.3) == 0.3
    assert check_positive("t", 1e-9) == 1e-9
    assert check_finite("v", -3) == -3.0
    with pytest.raises(ValueError, match="^v must be a finite number, got nan$"):
        check_finite("v", float("nan"))
    with pytest.raises(ValueError, match=r"^unknown mode 'x'; expected one of a, b$"):
        check_choice("mode", "x", ("a", "b"))


def test_check_schedule_checks_bounds_and_values_over_progress():
    check_schedule("s", LinearSchedule(0.0, 1.0), 0.0, 1.0)
    with raises_named("s end", "in [0, 1], got 1.5"):
        check_schedule("s", LinearSchedule(0.2, 1.5), 0.0, 1.0)
    # a plain callable: evaluated over progress 0, 0.05, ..., 1
    with raises_named("s value at progress 0.55", "in [0, 1], got 1.1"):
        check_schedule("s", lambda p: 2 * p, 0.0, 1.0)


# -- exclusive cross-entropy: the function


@pytest.mark.parametrize(
    "kwargs, setting, interval",
    [
        (dict(rho=1.5), "rho", "in [0, 1], got 1.5"),
        (dict(rho=-0.1), "rho", "in [0, 1], got -0.1"),
        (dict(rho=float("nan")), "rho", "in [0, 1], got nan"),
        (dict(rho=1.5, confidence="margin"), "rho", "in [0, 1], got 1.5"),
        (dict(rho=-1.0, confidence="logit_margin"), "rho", "a finite number >= 0, got -1"),
        (dict(rho=math.inf, confidence="logit_margin"), "rho", "a finite number >= 0, got inf"),
        (dict(sample_prob=1.5), "sample_prob", "in [0, 1], got 1.5"),
        (dict(sample_prob=-0.5), "sample_prob", "in [0, 1], got -0.5"),
        (dict(focal_alpha=1.5), "focal_alpha", "in [0, 1], got 1.5"),
        (dict(focal_alpha=-0.25, focal_gamma=2.0), "focal_alpha", "in [0, 1], got -0.25"),
        (dict(focal_gamma=-1.0), "focal_gamma", "a finite number >= 0, got -1"),
        (dict(focal_alpha=0.5, focal_gamma=math.inf), "focal_gamma", "a finite number >= 0"),
    ],
)
def test_ece_function_rejects_settings_out_of_range(kwargs, setting, interval):
    logits, target = ece_batch()
    with raises_named(setting, interval):
        exclusive_cross_entropy(logits, target, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(rho=0.0),
        dict(rho=1.0),
        dict(rho=0.0, confidence="margin"),
        dict(rho=7.5, confidence="logit_margin"),  # logit units
        dict(rho=0.5, sample_prob=0.0),
        dict(rho=0.5, sample_prob=1.0),
        dict(rho=0.5, focal_alpha=0.0, focal_gamma=0.0),
        dict(rho=0.5, focal_alpha=1.0, focal_gamma=5.0),
    ],
)
def test_ece_function_accepts_the_ends_of_each_range(kwargs):
    logits, target = ece_batch()
    assert torch.isfinite(exclusive_cross_entropy(logits, target, **kwargs))


# -- exclusive cross-entropy: the module checks when it is built


@pytest.mark.parametrize(
    "kwargs, setting, interval",
    [
        (dict(schedule=1.5), "schedule (rho) value", "in [0, 1], got 1.5"),
        (dict(schedule=-0.2), "schedule (rho) value", "in [0, 1], got -0.2"),
        (
            dict(schedule={"type": "linear", "start": 0.2, "end": 1.5}),
            "schedule (rho) end",
            "in [0, 1], got 1.5",
        ),
        (
            dict(schedule={"type": "sigmoid", "start": -0.5, "end": 0.7}),
            "schedule (rho) start",
            "in [0, 1], got -0.5",
        ),
        (
            dict(schedule={"type": "epoch_sigmoid", "scale": 2.0}),
            "schedule (rho) scale",
            "in [0, 1], got 2",
        ),
        (dict(schedule=lambda p: 1.0 + p), "schedule (rho) value at progress 0.05", "in [0, 1]"),
        (
            dict(schedule=-1.0, confidence="logit_margin"),
            "schedule (rho) value",
            "a finite number >= 0, got -1",
        ),
        (
            dict(sampling_schedule=1.2),
            "sampling_schedule (keep probability) value",
            "in [0, 1], got 1.2",
        ),
        (
            dict(sampling_schedule={"type": "linear", "start": -0.1, "end": 0.5}),
            "sampling_schedule (keep probability) start",
            "in [0, 1], got -0.1",
        ),
        (dict(focal_alpha=2.0), "focal_alpha", "in [0, 1], got 2"),
        (dict(focal_gamma=-2.0), "focal_gamma", "a finite number >= 0, got -2"),
    ],
)
def test_ece_module_rejects_settings_when_built(kwargs, setting, interval):
    with raises_named(setting, interval):
        ExclusiveCrossEntropy(**kwargs)


def test_ece_module_accepts_valid_schedules_for_each_confidence():
    for spec in ("constant", "paper_table2", "reference_exclusivity", 0.0, 1.0):
        ExclusiveCrossEntropy(spec, sampling_schedule="reference_sampling")
    module = ExclusiveCrossEntropy(3.0, confidence="logit_margin")  # logit units
    assert module.rho == 3.0


def test_ece_module_rechecks_a_callable_schedule_at_every_call():
    # a schedule that leaves the range only beyond the progress grid is caught by the call
    module = ExclusiveCrossEntropy(lambda p: 0.5)
    module.schedule = lambda p: 1.25
    logits, target = ece_batch()
    with raises_named("rho", "in [0, 1], got 1.25"):
        module(logits, target)


# -- nnPU


@pytest.mark.parametrize(
    "kwargs, setting, interval",
    [
        (dict(prior=0.0), "prior", "in (0, 1), got 0"),
        (dict(prior=1.0), "prior", "in (0, 1), got 1"),
        (dict(prior=0.3, beta=-0.1), "beta", "a finite number >= 0, got -0.1"),
        (dict(prior=0.3, beta=math.inf), "beta", "a finite number >= 0, got inf"),
        (dict(prior=0.3, gamma=1.5), "gamma", "in [0, 1], got 1.5"),
        (dict(prior=0.3, gamma=-0.5), "gamma", "in [0, 1], got -0.5"),
    ],
)
def test_nnpu_rejects_settings_out_of_range(kwargs, setting, interval):
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 2, 2])
    prior = kwargs.pop("prior")
    with raises_named(setting, interval):
        nnpu_loss(logits, labels, prior, nonnegative="kiryo", **kwargs)
    with raises_named(setting, interval):
        NonNegativePULoss(prior, nonnegative="kiryo", **kwargs)


def test_nnpu_accepts_the_ends_of_kiryos_ranges():
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 2, 2])
    for beta, gamma in ((0.0, 0.0), (0.0, 1.0), (10.0, 0.5)):
        loss = nnpu_loss(logits, labels, 0.3, nonnegative="kiryo", beta=beta, gamma=gamma)
        assert torch.isfinite(loss)
        NonNegativePULoss(0.3, nonnegative="kiryo", beta=beta, gamma=gamma)


# -- label super-resolution


@pytest.mark.parametrize(
    "kwargs, setting, interval",
    [
        (dict(alpha=1.5), "alpha", "in [0, 1], got 1.5"),
        (dict(alpha=-0.1), "alpha", "in [0, 1], got -0.1"),
        (dict(variance_floor=0.0), "variance_floor", "a finite number > 0, got 0"),
        (dict(variance_floor=-0.03), "variance_floor", "a finite number > 0, got -0.03"),
        (dict(variance_floor=math.nan), "variance_floor", "a finite number > 0, got nan"),
    ],
)
def test_lsr_rejects_settings_out_of_range(kwargs, setting, interval):
    eta, rho = torch.full((2, 3), 0.5), torch.full((2, 3), 0.1)
    logits, z = torch.randn(2, 2, 4, 4), torch.tensor([0, 2])
    with raises_named(setting, interval):
        lsr_loss(logits, z, eta, rho, **kwargs)
    with raises_named(setting, interval):
        LabelSuperResolutionLoss(eta, rho, **kwargs)


def test_lsr_accepts_the_ends_of_alphas_range():
    eta, rho = torch.full((2, 3), 0.5), torch.full((2, 3), 0.1)
    logits, z = torch.randn(2, 2, 4, 4), torch.tensor([0, 2])
    for alpha in (0.0, 1.0):
        assert torch.isfinite(lsr_loss(logits, z, eta, rho, alpha=alpha))


# -- max-min uncertainty


def _maxmin_call(**kwargs):
    images = torch.rand(2, 3, 8, 8)
    mask = torch.rand(2, 1, 8, 8)
    labels = torch.tensor([0, 1])
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    return maxmin_objective(images, mask, labels, classifier, kwargs.pop("t", 5.0), **kwargs)


@pytest.mark.parametrize(
    "call, setting, interval",
    [
        (lambda: extended_log_barrier(torch.zeros(3), 0.0), "t", "a finite number > 0, got 0"),
        (lambda: extended_log_barrier(torch.zeros(3), math.inf), "t", "a finite number > 0"),
        (lambda: size_barrier(torch.rand(2, 4, 4), -1.0), "t", "a finite number > 0, got -1"),
        (lambda: soft_mask(torch.rand(2, 4, 4), omega=0.0), "omega", "a finite number > 0"),
        (lambda: soft_mask(torch.rand(2, 4, 4), sigma=1.5), "sigma", "in [0, 1], got 1.5"),
        (lambda: localizer_mask(torch.rand(1, 1, 4, 4), sigma=-0.1), "sigma", "in [0, 1]"),
        (lambda: wildcat_pool(torch.rand(1, 2, 4, 4), kmax=0.0), "kmax", "a finite number > 0"),
        (lambda: wildcat_pool(torch.rand(1, 2, 4, 4), kmax=1.5), "kmax", "a fraction in (0, 1]"),
        (lambda: wildcat_pool(torch.rand(1, 2, 4, 4), kmin=-0.1), "kmin", "a finite number >= 0"),
        (lambda: wildcat_pool(torch.rand(1, 2, 4, 4), kmin=2.5), "kmin", "a fraction in (0, 1]"),
        (lambda: wildcat_pool(torch.rand(1, 2, 4, 4), alpha=-1.0), "alpha", "a finite number >= 0"),
        (lambda: barrier_t(1, t0=0.0), "t0", "a finite number > 0, got 0"),
        (lambda: barrier_t(1, factor=0.99), "factor", "a finite number >= 1, got 0.99"),
        (lambda: barrier_t(1, t_max=-5.0), "t_max", "a finite number > 0, got -5"),
        (lambda: barrier_t(-1), "epoch", "a finite number >= 0, got -1"),
        (lambda: _maxmin_call(t=0.0), "t", "a finite number > 0, got 0"),
        (lambda: _maxmin_call(lam=-1e-7), "lam", "a finite number >= 0"),
        (lambda: _maxmin_call(size_weight=-1.0), "size_weight", "a finite number >= 0"),
        (lambda: _maxmin_call(localizer_weight=math.nan), "localizer_weight", "a finite number"),
    ],
)
def test_maxmin_rejects_settings_out_of_range(call, setting, interval):
    with raises_named(setting, interval):
        call()


def test_maxmin_accepts_the_ends_of_each_range():
    cams = torch.rand(1, 2, 4, 4)
    assert wildcat_pool(cams, kmax=1.0, kmin=0.0, alpha=0.0).shape == (1, 2)
    assert wildcat_pool(cams, kmax=3, kmin=2).shape == (1, 2)  # whole counts
    assert barrier_t(10, factor=1.0) == 5.0
    for sigma in (0.0, 1.0):
        assert torch.isfinite(soft_mask(torch.rand(2, 4, 4), sigma=sigma)).all()
    losses = _maxmin_call(lam=0.0, size_weight=0.0, localizer_weight=0.0)
    assert all(torch.isfinite(v) for v in losses.values())


# -- box density


@pytest.mark.parametrize(
    "kwargs, setting, interval",
    [
        (dict(iou_threshold=1.5), "iou_threshold", "in [0, 1], got 1.5"),
        (dict(iou_threshold=-0.5), "iou_threshold", "in [0, 1], got -0.5"),
        (dict(score_threshold=math.nan), "score_threshold", "a finite number, got nan"),
    ],
)
def test_bde_rejects_settings_out_of_range(kwargs, setting, interval):
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    with raises_named(setting, interval):
        bde_weights(boxes, boxes, **kwargs)
