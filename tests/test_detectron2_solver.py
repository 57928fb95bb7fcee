"""Whole-model gradient-norm clipping (SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model").

Skipped where detectron2 is not importable (see docs/detectron2.md), except under CI.
"""

import importlib.util
import math
import os

import pytest
import torch
from _frameworks import DETECTRON2_HINT, require

require("detectron2", "torchvision", hint=DETECTRON2_HINT)

from detectron2.config import get_cfg  # noqa: E402
from detectron2.solver import build_optimizer as d2_build_optimizer  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from torch import nn  # noqa: E402

from sparse_ext.detectron2 import (  # noqa: E402
    build_optimizer,
    load_sparse_config,
    maybe_add_full_model_gradient_clipping,
    validate_clip_config,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "configs", "detectron2")
SHIPPED_CONFIGS = sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml"))


class TwoParams(nn.Module):
    """Two 2-vectors; gradients set by hand."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(2, dtype=torch.float64))
        self.b = nn.Parameter(torch.zeros(2, dtype=torch.float64))


def close(actual, expected):
    """clip_grad_norm_ divides by norm + 1e-6."""
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)


def plain_sgd_cfg(clip_type="full_model", clip_value=1.0, enabled=True):
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = 0.5
    cfg.SOLVER.MOMENTUM = 0.0
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = enabled
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = clip_value
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
    return cfg


def step_with(cfg, grad_a, grad_b, builder=build_optimizer):
    model = TwoParams()
    opt = builder(cfg, model)
    model.a.grad = torch.tensor(grad_a, dtype=torch.float64)
    model.b.grad = torch.tensor(grad_b, dtype=torch.float64)
    with EventStorage(0) as storage:
        opt.step()
        logged = storage.latest().get("grad_norm")
    return model, opt, logged


def test_full_model_clipping_scales_all_gradients_by_one_factor():
    """grads (3, 0) and (0, 4): whole-model norm 5, clipped to 1 -> both scaled by 1/5, so with
    lr 0.5 the parameters move by -0.5 * (0.6, 0) and -0.5 * (0, 0.8)."""
    model, _, logged = step_with(plain_sgd_cfg(), [3.0, 0.0], [0.0, 4.0])
    close(model.a.detach(), torch.tensor([-0.3, 0.0], dtype=torch.float64))
    close(model.b.detach(), torch.tensor([0.0, -0.4], dtype=torch.float64))
    assert logged[0] == pytest.approx(5.0)  # the norm before clipping


def test_detectron2_norm_clipping_is_per_parameter_and_differs():
    """Detectron2's CLIP_TYPE "norm" clips each parameter to norm 1: (1, 0) and (0, 1), which
    changes the update's direction; the whole-model clip above keeps it."""
    model, _, _ = step_with(plain_sgd_cfg("norm"), [3.0, 0.0], [0.0, 4.0], d2_build_optimizer)
    close(model.a.detach(), torch.tensor([-0.5, 0.0], dtype=torch.float64))
    close(model.b.detach(), torch.tensor([0.0, -0.5], dtype=torch.float64))
    # and ours passes "norm" through to Detectron2 unchanged
    ours, _, _ = step_with(plain_sgd_cfg("norm"), [3.0, 0.0], [0.0, 4.0])
    close(ours.b.detach(), model.b.detach())


def test_gradients_below_the_limit_are_untouched():
    model, _, logged = step_with(plain_sgd_cfg(clip_value=10.0), [3.0, 0.0], [0.0, 4.0])
    close(model.b.detach(), torch.tensor([0.0, -2.0], dtype=torch.float64))
    assert logged[0] == pytest.approx(5.0)


def test_disabled_clipping_builds_detectron2_sgd():
    _, opt, logged = step_with(plain_sgd_cfg(enabled=False), [3.0, 0.0], [0.0, 4.0])
    assert type(opt) is torch.optim.SGD and logged is None


def test_wrapping_a_class_and_an_instance():
    cfg = plain_sgd_cfg(clip_value=2.0)
    cls = maybe_add_full_model_gradient_clipping(cfg, torch.optim.SGD)
    assert issubclass(cls, torch.optim.SGD) and cls is not torch.optim.SGD
    p = nn.Parameter(torch.zeros(3))
    opt = cls([p], lr=1.0)
    p.grad = torch.tensor([0.0, 6.0, 8.0])
    opt.step()  # outside an EventStorage: nothing logged, no error
    close(p.detach(), torch.tensor([0.0, -1.2, -1.6]))
    inst = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    assert maybe_add_full_model_gradient_clipping(cfg, inst) is inst
    assert isinstance(inst, torch.optim.SGD) and type(inst) is not torch.optim.SGD
    with pytest.raises(TypeError):
        maybe_add_full_model_gradient_clipping(cfg, object)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("CLIP_TYPE", "whole", "CLIP_TYPE = 'whole': must be one of value, norm, full_model"),
        ("CLIP_VALUE", 0.0, "CLIP_VALUE = 0.0: must be a number > 0"),
        ("CLIP_VALUE", -1.0, "CLIP_VALUE = -1.0"),
        ("CLIP_VALUE", math.nan, "CLIP_VALUE = nan"),
        ("CLIP_VALUE", math.inf, "CLIP_VALUE = inf"),
        ("NORM_TYPE", 0.0, "NORM_TYPE = 0.0: must be a number > 0"),
    ],
)
def test_bad_clip_settings_fail_naming_the_key(key, value, message):
    cfg = plain_sgd_cfg()
    cfg.SOLVER.CLIP_GRADIENTS[key] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        build_optimizer(cfg, TwoParams())
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
    validate_clip_config(cfg)  # disabled: not checked, as Detectron2


def test_nonfinite_gradient_norm_is_logged_not_hidden():
    _, _, logged = step_with(plain_sgd_cfg(), [math.inf, 0.0], [0.0, 1.0])
    assert not math.isfinite(logged[0])


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_every_shipped_recipe_clips_the_whole_model_gradient_at_10(name):
    cfg = load_sparse_config(os.path.join(CONFIG_DIR, name))
    clip = cfg.SOLVER.CLIP_GRADIENTS
    assert (clip.ENABLED, clip.CLIP_TYPE, clip.CLIP_VALUE, clip.NORM_TYPE) == (
        True,
        "full_model",
        10.0,
        2.0,
    )


def test_train_net_trainer_builds_the_clipping_optimizer():
    spec = importlib.util.spec_from_file_location(
        "train_net_under_test", os.path.join(REPO, "tools", "train_net.py")
    )
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    cfg = load_sparse_config(os.path.join(CONFIG_DIR, "faster_rcnn_R_18_FPN_tiny_cpu.yaml"))
    opt = train_net.Trainer.build_optimizer(cfg, TwoParams())
    assert isinstance(opt, torch.optim.SGD) and "FullModelGradientClip" in type(opt).__name__
