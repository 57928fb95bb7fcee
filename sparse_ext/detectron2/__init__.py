"""Detectron2 adapter: partial-annotation losses in Faster R-CNN, by config.

Importing this package registers ``SparseROIHeads`` (ROI_HEADS_REGISTRY) and ``SparseRPN``
(PROPOSAL_GENERATOR_REGISTRY). Then::

    cfg = get_cfg(); add_sparse_config(cfg)
    cfg.MODEL.ROI_HEADS.NAME = "SparseROIHeads"
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "SparseRPN"
    cfg.MODEL.SPARSE.ROI_LOSS = "nnpu"; cfg.MODEL.SPARSE.PU.PRIOR = 0.04

The maths lives in :mod:`sparse_ext.losses` and :mod:`sparse_ext.metrics`; this package is wiring.
"""

INSTALL_HINT = (
    "sparse_ext.detectron2 needs Detectron2, which is not on PyPI: install it from source with "
    "pip install 'git+https://github.com/facebookresearch/detectron2.git' "
    "(or clone it and put the clone on PYTHONPATH); see docs/detectron2.md"
)

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised where detectron2 is absent
    raise ImportError(INSTALL_HINT) from e

from sparse_ext.detectron2.config import (  # noqa: E402
    VALID_LOSSES,
    add_sparse_config,
    load_sparse_config,
    model_zoo_config_file,
    validate_sparse_config,
    validate_sparse_test_config,
)
from sparse_ext.detectron2.data import register_partial_coco  # noqa: E402
from sparse_ext.detectron2.evaluation import (  # noqa: E402
    SparseDetectionEvaluator,
    build_sparse_evaluators,
)
from sparse_ext.detectron2.hooks import SparseProgressHook, set_sparse_progress  # noqa: E402
from sparse_ext.detectron2.roi_heads import (  # noqa: E402
    SparseFastRCNNOutputLayers,
    SparseROIHeads,
)
from sparse_ext.detectron2.rpn import SparseRPN  # noqa: E402
from sparse_ext.detectron2.solver import (  # noqa: E402
    build_optimizer,
    maybe_add_full_model_gradient_clipping,
    validate_clip_config,
)

__all__ = [
    "INSTALL_HINT",
    "VALID_LOSSES",
    "SparseDetectionEvaluator",
    "SparseFastRCNNOutputLayers",
    "SparseProgressHook",
    "SparseROIHeads",
    "SparseRPN",
    "add_sparse_config",
    "build_optimizer",
    "build_sparse_evaluators",
    "load_sparse_config",
    "maybe_add_full_model_gradient_clipping",
    "model_zoo_config_file",
    "register_partial_coco",
    "set_sparse_progress",
    "validate_clip_config",
    "validate_sparse_config",
    "validate_sparse_test_config",
]
