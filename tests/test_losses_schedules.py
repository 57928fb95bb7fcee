"""Schedules of training progress -> rho / keep probability (sparse_ext.losses.schedules)."""

import dataclasses
import math
import pickle
import types

import pytest

from sparse_ext.losses import (
    ConstantSchedule,
    EpochSigmoidSchedule,
    LinearSchedule,
    RampSigmoidSchedule,
    SigmoidSchedule,
    build_schedule,
)
from sparse_ext.losses.schedules import NAMED_SCHEDULES, SCHEDULE_TYPES


def sig(z):
    return 1.0 / (1.0 + math.exp(-z))


# -- named schedules against hand-computed values


@pytest.mark.parametrize(
    "p, expected",
    [
        (0.0, 0.5),  # sigmoid(0.75 * 0)
        (1 / 12, 0.5926665999540698),  # t = 0.5: sigmoid(0.375)
        (1 / 6, 0.679178699175393),  # t = 1: sigmoid(0.75)
        (0.5, 0.679178699175393),  # t stays 1
        (1.0, 0.679178699175393),
    ],
)
def test_paper_table2(p, expected):
    assert build_schedule("paper_table2")(p) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(sig(0.75 * min(6 * p, 1.0)), abs=1e-12)


@pytest.mark.parametrize(
    "p, expected",
    [
        (0.0, 1.0 - 0.32 * 4.5397868702434395e-05),  # 1 - 0.32 * sigmoid(-10)
        (0.2, 1.0 - 0.32 * 0.03444519566621117),  # sigmoid(-10 / 3): still no exclusion to speak of
        (0.3, 0.84),  # the midpoint: (1 + 0.68) / 2
        (0.4, 1.0 - 0.32 * 0.9655548043337889),  # sigmoid(10 / 3)
        (1.0, 1.0 - 0.32 * 0.9999999999264704),  # sigmoid(70 / 3): the Table 2 end value 0.68
    ],
)
def test_ce_warmup(p, expected):
    """The ECE configs' rho: 1 (sampled CE) early on, then 0.68 (the end of Table 2's)."""
    assert build_schedule("ce_warmup")(p) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "p, expected",
    [
        (0.0, 0.5 * 0.0066928509242848554),  # epoch 0: 0.5 * sigmoid(-5)
        (1 / 12, 0.5 * 0.07585818002124355),  # epoch 25: 0.5 * sigmoid(-2.5)
        (1 / 6, 0.25),  # epoch 50: 0.5 * sigmoid(0)
        (1.0, 0.5 * 0.9999999999861121),  # epoch 300: 0.5 * sigmoid(25)
    ],
)
def test_reference_exclusivity(p, expected):
    assert build_schedule("reference_exclusivity")(p) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "p, expected",
    [
        (0.0, 0.5 * 3.059022269256247e-07),  # epoch 0: 0.5 * sigmoid(-15)
        (1 / 12, 0.5 * 3.726639284186561e-06),  # epoch 25: 0.5 * sigmoid(-12.5)
        (1 / 6, 0.5 * 4.5397868702434395e-05),  # epoch 50: 0.5 * sigmoid(-10)
        (0.5, 0.25),  # epoch 150
        (1.0, 0.5 * 0.999999694097773),  # epoch 300: 0.5 * sigmoid(15)
    ],
)
def test_reference_sampling(p, expected):
    assert build_schedule("reference_sampling")(p) == pytest.approx(expected, rel=1e-9)


def test_reference_schedules_match_the_reference_package():
    ece_loss = pytest.importorskip("ece_loss.loss")
    exclusivity = ece_loss.get_sigmoid_annealing_function(50, 10)
    sampling = ece_loss.get_sigmoid_annealing_function(150, 10)
    for epoch in range(0, 301, 7):
        p = epoch / 300
        assert build_schedule("reference_exclusivity")(p) == pytest.approx(
            exclusivity(epoch, 0.5), rel=1e-12
        )
        assert build_schedule("reference_sampling")(p) == pytest.approx(
            sampling(epoch, 0.5), rel=1e-9
        )


def test_constant_name_is_the_default_half():
    assert build_schedule("constant") == ConstantSchedule(0.5)
    assert build_schedule("constant")(0.3) == 0.5


# -- the three basic classes


def test_constant_linear_sigmoid_values_and_clamping():
    assert ConstantSchedule(0.7)(0.0) == ConstantSchedule(0.7)(1.0) == 0.7
    lin = LinearSchedule(0.2, 1.0)
    assert [lin(p) for p in (0.0, 0.25, 1.0)] == pytest.approx([0.2, 0.4, 1.0])
    assert lin(-3.0) == 0.2 and lin(7.0) == 1.0  # p is clamped to [0, 1]
    s = SigmoidSchedule(0.25, 0.75, midpoint=0.3, temperature=0.05)
    assert s(0.3) == pytest.approx(0.5)
    assert s(0.35) == pytest.approx(0.25 + 0.5 * sig(1.0))
    assert s(2.0) == s(1.0) == pytest.approx(0.25 + 0.5 * sig(14.0))
    # no overflow for extreme arguments (math.exp(800) would raise)
    steep = SigmoidSchedule(0.0, 1.0, midpoint=0.5, temperature=1e-4)
    assert steep(0.0) == 0.0 and steep(1.0) == 1.0
    assert RampSigmoidSchedule(scale=2.0, ramp=0.5)(0.25) == pytest.approx(sig(1.0))
    assert EpochSigmoidSchedule(1.0, 10, 5, 100)(0.15) == pytest.approx(sig(1.0))


def test_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        SigmoidSchedule(0.0, 1.0, 0.5, 0.0)
    with pytest.raises(ValueError, match="ramp"):
        RampSigmoidSchedule(ramp=-1)
    with pytest.raises(ValueError, match="finite"):
        LinearSchedule(0.0, float("nan"))
    with pytest.raises(ValueError, match="number"):
        ConstantSchedule("high")
    with pytest.raises(ValueError, match="NaN"):
        ConstantSchedule(0.5)(float("nan"))


# -- build_schedule


def test_build_schedule_specs():
    assert build_schedule(0.3) == ConstantSchedule(0.3)
    assert build_schedule(1) == ConstantSchedule(1.0)
    lin = LinearSchedule(0.1, 0.9)
    assert build_schedule(lin) is lin
    assert build_schedule({"type": "linear", "start": 0.1, "end": 0.9}) == lin
    spec = {"type": "sigmoid", "start": 0.2, "end": 0.8, "midpoint": 0.4, "temperature": 0.1}
    assert build_schedule(spec) == SigmoidSchedule(0.2, 0.8, 0.4, 0.1)
    # any mapping (mmengine's ConfigDict is a dict subclass), and the input is not modified
    assert build_schedule(types.MappingProxyType(spec)) == SigmoidSchedule(0.2, 0.8, 0.4, 0.1)
    assert spec["type"] == "sigmoid"
    assert build_schedule({"type": "epoch_sigmoid"}) == NAMED_SCHEDULES["reference_exclusivity"]
    assert build_schedule(" Paper_Table2 ") is NAMED_SCHEDULES["paper_table2"]

    def custom(p):
        return 1 - p

    assert build_schedule(custom) is custom


def test_build_schedule_errors_list_the_valid_choices():
    with pytest.raises(ValueError, match="paper_table2") as e:
        build_schedule("cosine")
    for name in NAMED_SCHEDULES:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="valid types") as e:
        build_schedule({"type": "cosine"})
    for name in SCHEDULE_TYPES:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="valid types"):
        build_schedule({"start": 0.1})
    with pytest.raises(ValueError, match="bad arguments for schedule type 'linear'"):
        build_schedule({"type": "linear", "begin": 0.1, "end": 0.2})
    with pytest.raises(ValueError, match="bool"):
        build_schedule(True)
    with pytest.raises(ValueError, match="cannot build a schedule"):
        build_schedule(None)


def test_schedules_are_frozen_picklable_and_readable():
    for schedule in [*NAMED_SCHEDULES.values(), LinearSchedule(0.0, 1.0)]:
        copy = pickle.loads(pickle.dumps(schedule))
        assert copy == schedule and copy(0.37) == schedule(0.37)
        assert eval(repr(schedule)) == schedule  # the repr is the constructor call
    assert repr(ConstantSchedule(0.5)) == "ConstantSchedule(value=0.5)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        ConstantSchedule(0.5).value = 0.9
