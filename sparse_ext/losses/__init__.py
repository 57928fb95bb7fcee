"""Framework-agnostic losses for training from partial annotations.

Every loss has a functional form and an ``nn.Module`` form; modules that anneal expose
``set_progress(p)`` with ``p`` in [0, 1], the fraction of training done.
"""

# -- schedules and exclusive cross-entropy
# -- nnPU, box density, label super-resolution, max-min uncertainty
from sparse_ext.losses.box_density import bde_weights
from sparse_ext.losses.exclusive_cross_entropy import (
    ExclusiveCrossEntropy,
    background_keep_prob,
    beyond_exclusion_budget,
    budget_among_excludable,
    exclusive_cross_entropy,
)
from sparse_ext.losses.label_super_resolution import (
    LabelSuperResolutionLoss,
    load_lsr_table,
    lsr_loss,
)
from sparse_ext.losses.maxmin import (
    extended_log_barrier,
    size_barrier,
    soft_mask,
    uncertainty_regularizer,
)
from sparse_ext.losses.maxmin_objective import (
    barrier_t,
    class_agnostic_activation,
    localizer_mask,
    maxmin_objective,
    wildcat_pool,
)
from sparse_ext.losses.nnpu import (
    NonNegativePULoss,
    estimated_unlabeled_prior,
    nnpu_loss,
    unlabeled_prior,
)
from sparse_ext.losses.schedules import (
    ConstantSchedule,
    EpochSigmoidSchedule,
    LinearSchedule,
    RampSigmoidSchedule,
    SigmoidSchedule,
    build_schedule,
)

__all__ = [
    "ConstantSchedule",
    "EpochSigmoidSchedule",
    "ExclusiveCrossEntropy",
    "LinearSchedule",
    "RampSigmoidSchedule",
    "SigmoidSchedule",
    "background_keep_prob",
    "beyond_exclusion_budget",
    "budget_among_excludable",
    "build_schedule",
    "exclusive_cross_entropy",
    "LabelSuperResolutionLoss",
    "NonNegativePULoss",
    "barrier_t",
    "bde_weights",
    "class_agnostic_activation",
    "extended_log_barrier",
    "load_lsr_table",
    "localizer_mask",
    "lsr_loss",
    "maxmin_objective",
    "nnpu_loss",
    "unlabeled_prior",
    "estimated_unlabeled_prior",
    "size_barrier",
    "soft_mask",
    "uncertainty_regularizer",
    "wildcat_pool",
]
