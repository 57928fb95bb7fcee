"""Schedules mapping training progress p in [0, 1] to a loss hyper-parameter.

Exclusive cross-entropy anneals its exclusivity threshold rho (Panteli et al., ICCV 2021, Eq. 7:
``delta(p_i < rho * beta)``, beta being the annealing term) and, in the reference code, the
probability of keeping an unannotated term. A schedule is a small frozen dataclass: callable as
``schedule(p) -> float`` (p is clamped to [0, 1]), picklable, with a readable repr so that it can
sit in a config. :func:`build_schedule` turns a config value (number, dict or name) into one.

Named schedules (:data:`NAMED_SCHEDULES`):

- ``"constant"``: rho = 0.5, the default of :class:`ExclusiveCrossEntropy`.
- ``"paper_table2"``: the paper's Table 2 sigmoid schedule, rho = sigmoid(0.75 * t) with t rising
  linearly 0 -> 1 over the first 1/6 of training, then 1 (rho 0.5 -> 0.68).
- ``"reference_exclusivity"``: the reference code's (``ece-loss`` 1.0.0) exclusivity threshold,
  0.5 * sigmoid((epoch - 50) / 10) on a 300-epoch scale, epoch = 300 * p.
- ``"reference_sampling"``: the reference code's background sampling probability,
  0.5 * sigmoid((epoch - 150) / 10) on the same scale.
- ``"ce_warmup"``: rho = 1 (no exclusion: every kept unannotated term is background) for about
  the first quarter of training, then down to 0.68 (the end value of the paper's Table 2
  schedule) by about 40 %: sigmoid from 1.0 to 0.68, midpoint 0.3, temperature 0.03. With a
  constant rho, an untrained network (scores near p = 0.5) has the background pixels it
  happens to score above rho excluded from the first step, and they are never pulled back: one seed of three over-segmented
  at 30 % on both benchmark datasets (docs/benchmarks/README.md). The ECE configs' schedule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Dict, Union

from sparse_ext.losses._validate import check_finite as _finite
from sparse_ext.losses._validate import check_positive as _positive

__all__ = [
    "NAMED_SCHEDULES",
    "SCHEDULE_TYPES",
    "ConstantSchedule",
    "EpochSigmoidSchedule",
    "LinearSchedule",
    "RampSigmoidSchedule",
    "Schedule",
    "SigmoidSchedule",
    "build_schedule",
]


def _clamp01(p: float) -> float:
    p = float(p)
    if math.isnan(p):
        raise ValueError("training progress p is NaN")
    return min(max(p, 0.0), 1.0)


def _sigmoid(z: float) -> float:
    # Stable for any z: math.exp overflows for z < -709 in the textbook form.
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass(frozen=True)
class ConstantSchedule:
    """value(p) = value."""

    value: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", _finite("value", self.value))

    def __call__(self, p: float) -> float:
        _clamp01(p)
        return self.value

    def bounds(self) -> Dict[str, float]:
        """The parameters that bound the values (checked against a loss setting's range)."""
        return {"value": self.value}


@dataclass(frozen=True)
class LinearSchedule:
    """value(p) = start + (end - start) * p."""

    start: float
    end: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _finite("start", self.start))
        object.__setattr__(self, "end", _finite("end", self.end))

    def __call__(self, p: float) -> float:
        return self.start + (self.end - self.start) * _clamp01(p)

    def bounds(self) -> Dict[str, float]:
        """The parameters that bound the values (checked against a loss setting's range)."""
        return {"start": self.start, "end": self.end}


@dataclass(frozen=True)
class SigmoidSchedule:
    """value(p) = start + (end - start) * sigmoid((p - midpoint) / temperature)."""

    start: float
    end: float
    midpoint: float = 0.5
    temperature: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _finite("start", self.start))
        object.__setattr__(self, "end", _finite("end", self.end))
        object.__setattr__(self, "midpoint", _finite("midpoint", self.midpoint))
        object.__setattr__(self, "temperature", _positive("temperature", self.temperature))

    def __call__(self, p: float) -> float:
        z = (_clamp01(p) - self.midpoint) / self.temperature
        return self.start + (self.end - self.start) * _sigmoid(z)

    def bounds(self) -> Dict[str, float]:
        """The parameters that bound the values (checked against a loss setting's range)."""
        return {"start": self.start, "end": self.end}


@dataclass(frozen=True)
class RampSigmoidSchedule:
    """value(p) = sigmoid(scale * min(p / ramp, 1)): the paper's Table 2 "sigmoid" schedule.

    Table 2 of Panteli et al. anneals rho = sigmoid(rho_linear), rho_linear = 0.75 * t with t
    going 0 -> 1; t reaches 1 after ``ramp`` of training (1/6: epoch 50 of 300, the annealing
    epoch of the paper's supplementary Table 2), so rho goes 0.5 -> sigmoid(0.75) = 0.679.
    """

    scale: float = 0.75
    ramp: float = 1.0 / 6.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _finite("scale", self.scale))
        object.__setattr__(self, "ramp", _positive("ramp", self.ramp))

    def __call__(self, p: float) -> float:
        t = min(_clamp01(p) / self.ramp, 1.0)
        return _sigmoid(self.scale * t)

    def bounds(self) -> Dict[str, float]:
        """The values at the start and the end of the ramp (the schedule lies between them)."""
        return {"start": 0.5, "end": _sigmoid(self.scale)}


@dataclass(frozen=True)
class EpochSigmoidSchedule:
    """value(p) = scale * sigmoid((epoch - midpoint_epoch) / temperature), epoch = total_epochs * p.

    The annealing of the reference code (``ece_loss.get_sigmoid_annealing_function``:
    ``sigmoid((epoch - epoch_checkpoint) / temperature) * threshold``) on its epoch scale.
    """

    scale: float = 0.5
    midpoint_epoch: float = 50.0
    temperature: float = 10.0
    total_epochs: float = 300.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _finite("scale", self.scale))
        object.__setattr__(self, "midpoint_epoch", _finite("midpoint_epoch", self.midpoint_epoch))
        object.__setattr__(self, "temperature", _positive("temperature", self.temperature))
        object.__setattr__(self, "total_epochs", _positive("total_epochs", self.total_epochs))

    def __call__(self, p: float) -> float:
        epoch = self.total_epochs * _clamp01(p)
        return self.scale * _sigmoid((epoch - self.midpoint_epoch) / self.temperature)

    def bounds(self) -> Dict[str, float]:
        """The values lie between 0 and ``scale``."""
        return {"scale": self.scale}


Schedule = Union[
    ConstantSchedule, LinearSchedule, SigmoidSchedule, RampSigmoidSchedule, EpochSigmoidSchedule
]

#: Schedule classes by the ``type`` key of a dict spec.
SCHEDULE_TYPES: Dict[str, type] = {
    "constant": ConstantSchedule,
    "linear": LinearSchedule,
    "sigmoid": SigmoidSchedule,
    "ramp_sigmoid": RampSigmoidSchedule,
    "epoch_sigmoid": EpochSigmoidSchedule,
}

#: Schedules by name (see the module docstring).
NAMED_SCHEDULES: Dict[str, Schedule] = {
    "constant": ConstantSchedule(0.5),
    "paper_table2": RampSigmoidSchedule(scale=0.75, ramp=1.0 / 6.0),
    "reference_exclusivity": EpochSigmoidSchedule(0.5, 50.0, 10.0, 300.0),
    "reference_sampling": EpochSigmoidSchedule(0.5, 150.0, 10.0, 300.0),
    "ce_warmup": SigmoidSchedule(start=1.0, end=0.68, midpoint=0.3, temperature=0.03),
}


def build_schedule(spec: Any) -> Callable[[float], float]:
    """A schedule from a config value.

    Args:
        spec: a schedule object (any callable ``p -> value``, returned as is); a number (a
            :class:`ConstantSchedule`); a name from :data:`NAMED_SCHEDULES`; or a mapping with a
            ``type`` from :data:`SCHEDULE_TYPES` and that class's arguments, e.g.
            ``{"type": "sigmoid", "start": 0.25, "end": 0.75, "midpoint": 0.3, "temperature": 0.05}``.

    Raises:
        ValueError: unknown name or type (the message lists the valid ones), bad arguments.
    """
    if isinstance(spec, bool):
        raise ValueError(f"a schedule cannot be a bool, got {spec!r}")
    if isinstance(spec, (int, float)):
        return ConstantSchedule(spec)
    if isinstance(spec, str):
        schedule = NAMED_SCHEDULES.get(spec.strip().lower())
        if schedule is None:
            raise ValueError(
                f"unknown schedule name {spec!r}; valid names: {', '.join(NAMED_SCHEDULES)}"
            )
        return schedule
    if isinstance(spec, Mapping):
        kwargs = dict(spec)
        kind = kwargs.pop("type", None)
        cls = SCHEDULE_TYPES.get(str(kind).strip().lower()) if kind is not None else None
        if cls is None:
            raise ValueError(
                f"unknown schedule type {kind!r} in {dict(spec)!r}; valid types: "
                f"{', '.join(SCHEDULE_TYPES)}"
            )
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise ValueError(f"bad arguments for schedule type {kind!r}: {e}") from None
    if callable(spec):
        return spec
    raise ValueError(
        f"cannot build a schedule from {spec!r}: give a number, a name "
        f"({', '.join(NAMED_SCHEDULES)}), a dict with a 'type' ({', '.join(SCHEDULE_TYPES)}) "
        "or a callable p -> value"
    )
