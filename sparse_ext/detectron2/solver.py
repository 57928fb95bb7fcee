"""Whole-model gradient-norm clipping for Detectron2's SGD (``CLIP_TYPE: "full_model"``).

Detectron2's ``SOLVER.CLIP_GRADIENTS`` clips each parameter's gradient on its own ("value" or
"norm"). The official code of Zhao, Pang et al. (MICCAI 2021) clips the norm of the WHOLE
model's gradient, ``torch.nn.utils.clip_grad_norm_(model.parameters(), 10)``, which keeps the
update direction and bounds its length. This module adds that as a third ``CLIP_TYPE``,
``"full_model"``, the way Mask2Former does (its ``Trainer.build_optimizer`` with
``maybe_add_full_model_gradient_clipping``)::

    SOLVER:
      CLIP_GRADIENTS: {ENABLED: True, CLIP_TYPE: "full_model", CLIP_VALUE: 10.0, NORM_TYPE: 2.0}

and a trainer uses it with::

    class Trainer(DefaultTrainer):
        @classmethod
        def build_optimizer(cls, cfg, model):
            return sparse_ext.detectron2.build_optimizer(cfg, model)

"value" and "norm" stay Detectron2's.
"""

from __future__ import annotations

import itertools
import math
from typing import Type, Union

import torch
from detectron2.config import CfgNode
from detectron2.solver import build_optimizer as d2_build_optimizer
from detectron2.utils.events import get_event_storage

__all__ = [
    "CLIP_TYPES",
    "FULL_MODEL",
    "build_optimizer",
    "maybe_add_full_model_gradient_clipping",
    "validate_clip_config",
]

FULL_MODEL = "full_model"
#: SOLVER.CLIP_GRADIENTS.CLIP_TYPE values: Detectron2's two and the whole-model norm.
CLIP_TYPES = ("value", "norm", FULL_MODEL)


def validate_clip_config(cfg: CfgNode) -> None:
    """Check ``SOLVER.CLIP_GRADIENTS`` when it is enabled: CLIP_TYPE one of :data:`CLIP_TYPES`,
    CLIP_VALUE a finite number > 0, NORM_TYPE > 0 (``inf`` allowed).

    Raises:
        ValueError: naming the key, its value and the valid range.
    """
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not clip.ENABLED:
        return
    if clip.CLIP_TYPE not in CLIP_TYPES:
        raise ValueError(
            f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE = {clip.CLIP_TYPE!r}: must be one of "
            f"{', '.join(CLIP_TYPES)}"
        )
    value = clip.CLIP_VALUE
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE = {value!r}: must be a number > 0")
    norm = clip.NORM_TYPE
    if isinstance(norm, bool) or not isinstance(norm, (int, float)) or not norm > 0:
        raise ValueError(
            f"SOLVER.CLIP_GRADIENTS.NORM_TYPE = {norm!r}: must be a number > 0 (inf: max norm)"
        )


def _log_grad_norm(total_norm: torch.Tensor) -> None:
    """Put the norm before clipping into the EventStorage (``grad_norm``) when there is one."""
    try:
        storage = get_event_storage()
    except AssertionError:  # no EventStorage: a custom loop
        return
    storage.put_scalar("grad_norm", float(total_norm), smoothing_hint=True)


def maybe_add_full_model_gradient_clipping(
    cfg: CfgNode, optimizer: Union[torch.optim.Optimizer, Type[torch.optim.Optimizer]]
) -> Union[torch.optim.Optimizer, Type[torch.optim.Optimizer]]:
    """With ``SOLVER.CLIP_GRADIENTS`` enabled and CLIP_TYPE ``"full_model"``, make ``optimizer``
    (an instance or a class, as Detectron2's ``maybe_add_gradient_clipping`` takes) clip the norm
    of all its parameters' gradients together at CLIP_VALUE (NORM_TYPE norm) before each step;
    otherwise return it unchanged. The norm before clipping is logged as ``grad_norm``.
    """
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not (clip.ENABLED and clip.CLIP_TYPE == FULL_MODEL):
        return optimizer
    validate_clip_config(cfg)
    max_norm, norm_type = float(clip.CLIP_VALUE), float(clip.NORM_TYPE)
    base = type(optimizer) if isinstance(optimizer, torch.optim.Optimizer) else optimizer
    if not (isinstance(base, type) and issubclass(base, torch.optim.Optimizer)):
        raise TypeError(f"expected a torch.optim.Optimizer or its class, got {optimizer!r}")

    def step(self, closure=None):
        params = itertools.chain(*[g["params"] for g in self.param_groups])
        _log_grad_norm(torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type))
        return super(clipped, self).step(closure)

    clipped = type(base.__name__ + "FullModelGradientClip", (base,), {"step": step})
    if isinstance(optimizer, torch.optim.Optimizer):
        optimizer.__class__ = clipped  # as Detectron2's maybe_add_gradient_clipping
        return optimizer
    return clipped


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Detectron2's ``build_optimizer`` (SGD, its parameter groups) with
    ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model"`` supported (see the module docstring);
    Detectron2's own clipping types are passed through unchanged."""
    validate_clip_config(cfg)
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not (clip.ENABLED and clip.CLIP_TYPE == FULL_MODEL):
        return d2_build_optimizer(cfg, model)
    plain = cfg.clone()
    plain.defrost()
    plain.SOLVER.CLIP_GRADIENTS.ENABLED = False  # Detectron2 does not know "full_model"
    return maybe_add_full_model_gradient_clipping(cfg, d2_build_optimizer(plain, model))
