"""Config keys of the Detectron2 adapter, and the loaders that turn them into loss objects."""

from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Sequence

import yaml
from detectron2.config import CfgNode as CN

__all__ = [
    "MODEL_ZOO_PREFIX",
    "VALID_LOSSES",
    "add_sparse_config",
    "annotated_fraction",
    "build_ece_loss",
    "check_loss_name",
    "load_sparse_config",
    "model_zoo_config_file",
    "pu_prior",
    "resolve_config_file",
    "sparse_loss_options",
    "validate_sparse_config",
    "validate_sparse_test_config",
]

#: MODEL.SPARSE.ECE.EXCLUSION_BUDGET that estimates pi_u per batch (the default; ROI head only).
ESTIMATED_BUDGET = -2.0

#: Loss names accepted by MODEL.SPARSE.ROI_LOSS and MODEL.SPARSE.RPN_LOSS.
VALID_LOSSES = ("ce", "focal", "ece", "nnpu", "bde")

#: ``_BASE_`` prefix resolved against the installed detectron2's model-zoo configs.
MODEL_ZOO_PREFIX = "model_zoo://"


def add_sparse_config(cfg: CN) -> None:
    """Add the ``MODEL.SPARSE`` and ``TEST.SPARSE`` nodes (defaults reproduce stock Detectron2).

    MODEL.SPARSE.ROI_LOSS / RPN_LOSS: one of ``ce`` (Detectron2's own loss, unchanged), ``focal``
    (fvcore's sigmoid focal loss), ``ece`` (exclusive cross-entropy), ``nnpu`` (non-negative PU),
    ``bde`` (box-density weighted cross-entropy). The sub-nodes hold each loss's options.
    """
    _C = cfg
    _C.MODEL.SPARSE = CN()
    _C.MODEL.SPARSE.ROI_LOSS = "ce"
    _C.MODEL.SPARSE.RPN_LOSS = "ce"
    # The share f of the objects that carry an annotation, in (0, 1]; 0: read it from the
    # training datasets' metadata "sparse_fraction" (register_partial_coco copies the COCO file's
    # info.sparse_fraction, written by sparse-ext convert subsample). The segmentation recipes'
    # annotated_fraction. Used by the nnPU sampled prior.
    _C.MODEL.SPARSE.ANNOTATED_FRACTION = 0.0

    # Exclusive cross-entropy (Panteli et al., ICCV 2021, Eq. 7-8), sparse_ext.losses.
    _C.MODEL.SPARSE.ECE = CN()
    # rho(progress), progress = iter / SOLVER.MAX_ITER. TYPE: constant (rho = VALUE), linear
    # (START -> END), sigmoid (START + (END - START) * sigmoid((p - MIDPOINT) / TEMPERATURE)),
    # or a name from sparse_ext.losses.schedules.NAMED_SCHEDULES ("paper_table2",
    # "reference_exclusivity", "reference_sampling").
    _C.MODEL.SPARSE.ECE.SCHEDULE = _schedule_node(0.5)
    # "foreground" (1 - p(background), the paper), "margin" or "logit_margin".
    _C.MODEL.SPARSE.ECE.CONFIDENCE = "foreground"
    # Focal reweighting of the unannotated terms (Eq. 8); gamma 0 and alpha 1 switch it off.
    _C.MODEL.SPARSE.ECE.FOCAL_ALPHA = 1.0
    _C.MODEL.SPARSE.ECE.FOCAL_GAMMA = 0.0
    # Probability of keeping an unannotated term (background sampling), a schedule like rho.
    _C.MODEL.SPARSE.ECE.SAMPLING = _schedule_node(1.0)
    # The largest share of a batch's unannotated proposals (anchors) that rho may exclude
    # (sparse_ext.losses.beyond_exclusion_budget; the most confident stay excluded): 1 = no
    # bound (the paper); -1 = pi_u, the share of true objects expected among them, derived
    # like the nnPU sampled prior from ANNOTATED_FRACTION and PU.OBJECT_SHARE (RPN_OBJECT_SHARE);
    # -2 (the default) = the ROI head's pi_u estimated per batch from ANNOTATED_FRACTION and the
    # proposals that lie on annotations (sparse_ext.losses.estimated_unlabeled_prior; f unknown:
    # 0.2 with a warning); the RPN, which samples anchors, not proposals, is not bounded by -2.
    # The default guards against ECE's all-foreground collapse (docs/benchmarks, Detection).
    _C.MODEL.SPARSE.ECE.EXCLUSION_BUDGET = ESTIMATED_BUDGET
    # ROI head: an unannotated proposal whose IoU with an annotation reaches this (while below
    # ROI_HEADS.IOU_THRESHOLDS, so a background sample) keeps its background term: it is a
    # badly placed box on a labelled object, not a missing label (Fast R-CNN's background
    # range [0.1, 0.5)). 0 = off: every unannotated proposal may be excluded, as in the paper.
    _C.MODEL.SPARSE.ECE.KEEP_BACKGROUND_IOU = 0.0
    # ROI head, with KEEP_BACKGROUND_IOU: the same rule around the unannotated objects the model
    # already detects. The regressed boxes of this iteration's unannotated proposals whose
    # foreground score reaches this (after NMS at ROI_HEADS.NMS_THRESH_TEST) stand in for the
    # missing annotations, so a proposal covering part of a detected object stays background
    # instead of being excluded. 0 = off: only the annotations count.
    _C.MODEL.SPARSE.ECE.KEEP_BACKGROUND_SCORE = 0.0

    # Non-negative PU risk (Zhao, Pang et al., MICCAI 2021, Eq. 9-12), sparse_ext.losses.
    _C.MODEL.SPARSE.PU = CN()
    # "fixed": the paper's constant pi = PRIOR (RPN_PRIOR), the share of true objects among ALL
    # sampled proposals (anchors). "sampled": per batch pi_b = Np/N + (Nu/N) pi_u with pi_u the
    # share of true objects among the sampled UNLABELED proposals (sparse_ext.losses.nnpu).
    _C.MODEL.SPARSE.PU.PRIOR_MODE = "fixed"
    _C.MODEL.SPARSE.PU.PRIOR = 0.04  # fixed pi among the sampled proposals
    _C.MODEL.SPARSE.PU.RPN_PRIOR = 0.0  # among the sampled anchors; 0 = use PRIOR
    # sampled: pi_u of the ROI head and of the RPN; -1 = derived from ANNOTATED_FRACTION f and
    # the object share q by unlabeled_prior: pi_u = (1 - f) q / (1 - f q).
    _C.MODEL.SPARSE.PU.UNLABELED_PRIOR = -1.0
    _C.MODEL.SPARSE.PU.RPN_UNLABELED_PRIOR = -1.0
    # q: the share of candidates on a true object with every object annotated. ROI proposals:
    # 0.06, the true share among sampled proposals measured early in training on HeLa at 10 %
    # (issue 12); RPN anchors (IoU >= 0.7): 0.0014, measured on HeLa 256 px crops with the tiny
    # config's anchors (8-128 px). Both grow with the detector's and the dataset's object density.
    _C.MODEL.SPARSE.PU.OBJECT_SHARE = 0.06
    _C.MODEL.SPARSE.PU.RPN_OBJECT_SHARE = 0.0014
    _C.MODEL.SPARSE.PU.MODE = "detection"  # or "classic" (fixed prior only)
    _C.MODEL.SPARSE.PU.NONNEGATIVE = "clamp"  # or "kiryo", "none"
    _C.MODEL.SPARSE.PU.BETA = 0.0
    _C.MODEL.SPARSE.PU.GAMMA = 1.0
    # H in the risk: "log" (-log p, Eq. 9) or "sigmoid" (1 - p, bounded; Kiryo et al.)
    _C.MODEL.SPARSE.PU.SURROGATE = "log"

    # Box-density calibration (Li et al., MICCAI 2020), sparse_ext.losses.bde_weights: the
    # current iteration's own predictions with score >= SCORE_THRESH overlapping an unannotated
    # sample with IoU >= IOU_THRESH count towards its density.
    _C.MODEL.SPARSE.BDE = CN()
    _C.MODEL.SPARSE.BDE.IOU_THRESH = 0.5
    _C.MODEL.SPARSE.BDE.SCORE_THRESH = 0.5

    # "focal": fvcore.nn.sigmoid_focal_loss (RetinaNet's loss) on the RPN objectness and on the
    # ROI head's foreground logits (the ROI head then scores with sigmoid, USE_SIGMOID_CE).
    _C.MODEL.SPARSE.FOCAL = CN()
    _C.MODEL.SPARSE.FOCAL.ALPHA = 0.25
    _C.MODEL.SPARSE.FOCAL.GAMMA = 2.0

    # SparseDetectionEvaluator: F1/precision/recall at IOU_THRESH for scores >= SCORE_THRESH,
    # average recall/precision over SCORE_THRESHOLDS, optional class-agnostic NMS (0 = off).
    _C.TEST.SPARSE = CN()
    _C.TEST.SPARSE.IOU_THRESH = 0.5
    _C.TEST.SPARSE.SCORE_THRESH = 0.5
    _C.TEST.SPARSE.SCORE_THRESHOLDS = [round(0.5 + 0.05 * i, 2) for i in range(10)]
    # the F1 curve (f1@t, best_f1, best_f1_threshold): F1 at a threshold chosen on validation
    _C.TEST.SPARSE.F1_THRESHOLDS = [round(0.05 * i, 2) for i in range(1, 20)]
    _C.TEST.SPARSE.NMS_THRESH = 0.0


def _schedule_node(value: float) -> CN:
    node = CN()
    node.TYPE = "constant"
    node.VALUE = value
    node.START = value
    node.END = value
    node.MIDPOINT = 0.5
    node.TEMPERATURE = 0.1
    return node


def check_loss_name(name: str, key: str) -> str:
    """Return ``name`` lower-cased, or raise ValueError listing :data:`VALID_LOSSES`."""
    if not isinstance(name, str) or name.lower() not in VALID_LOSSES:
        raise ValueError(
            f"{key} = {name!r} is not a sparse_ext loss; valid: {', '.join(VALID_LOSSES)}"
        )
    return name.lower()


def _build_schedule(node: CN, key: str):
    from sparse_ext.losses.schedules import build_schedule

    kind = node.TYPE.strip().lower()
    specs = {
        "constant": {"type": "constant", "value": node.VALUE},
        "linear": {"type": "linear", "start": node.START, "end": node.END},
        "sigmoid": {
            "type": "sigmoid",
            "start": node.START,
            "end": node.END,
            "midpoint": node.MIDPOINT,
            "temperature": node.TEMPERATURE,
        },
    }
    try:
        return build_schedule(specs.get(kind, node.TYPE))
    except ValueError as e:
        raise ValueError(
            f"{key}: {e} (TYPE is constant, linear, sigmoid or a schedule name)"
        ) from e


# -- validation -------------------------------------------------------------------------------

_INF = math.inf


def _interval(lo: float, hi: float, lo_open: bool, hi_open: bool) -> str:
    """``"in [0, 1]"``, ``"in (0, 1)"``, ``">= 0"``, ``"> 0"``."""
    if hi == _INF:
        return f"{'>' if lo_open else '>='} {lo:g}"
    return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def _check_number(
    errors: List[str],
    key: str,
    value: Any,
    lo: float = -_INF,
    hi: float = _INF,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    allowed: Sequence[float] = (),
    what: str = "",
) -> None:
    """Append ``"KEY = value: must be in RANGE (what)"`` to ``errors`` unless ``value`` is a finite
    number in the interval [lo, hi] (ends excluded with ``lo_open`` / ``hi_open``), or one of the
    ``allowed`` special values."""
    rng = _interval(lo, hi, lo_open, hi_open)
    if allowed:
        rng += "".join(f" or {a:g}" for a in allowed)
    note = f" ({what})" if what else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        errors.append(f"{key} = {value!r}: must be a number {rng}{note}")
        return
    v = float(value)
    if v in allowed:
        return
    inside = (
        math.isfinite(v) and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)
    )
    if not inside:
        errors.append(f"{key} = {value!r}: must be {rng}{note}")


def _check_choice(
    errors: List[str], key: str, value: Any, choices: Sequence[str], *, ignore_case: bool = False
) -> None:
    ok = isinstance(value, str) and (value.strip().lower() if ignore_case else value) in choices
    if not ok:
        errors.append(f"{key} = {value!r}: must be one of {', '.join(choices)}")


def _raise(errors: List[str], node: str) -> None:
    if len(errors) == 1:
        raise ValueError(f"invalid {node} setting: {errors[0]}")
    if errors:
        raise ValueError(f"invalid {node} settings: " + "; ".join(errors))


def _check_schedule(errors: List[str], key: str, node: CN, what: str) -> None:
    from sparse_ext.losses.schedules import NAMED_SCHEDULES

    # the types whose arguments are the node's keys (see _build_schedule), then the named ones
    kinds = tuple(dict.fromkeys(("constant", "linear", "sigmoid", *NAMED_SCHEDULES)))
    _check_choice(errors, f"{key}.TYPE", node.TYPE, kinds, ignore_case=True)
    for name in ("VALUE", "START", "END"):
        _check_number(errors, f"{key}.{name}", node[name], 0.0, 1.0, what=what)
    _check_number(
        errors, f"{key}.MIDPOINT", node.MIDPOINT, 0.0, 1.0, what="training progress, not iterations"
    )
    _check_number(errors, f"{key}.TEMPERATURE", node.TEMPERATURE, 0.0, lo_open=True)


def validate_sparse_config(cfg: CN) -> None:
    """Check every scalar of ``cfg.MODEL.SPARSE`` (all of them, whichever loss is selected).

    Raises:
        ValueError: one error listing each bad ``MODEL.SPARSE.*`` key with its value and its valid
            range or choices, e.g. ``MODEL.SPARSE.PU.PRIOR = 1.5: must be in (0, 1)``.
    """
    from sparse_ext.losses.exclusive_cross_entropy import CONFIDENCE_MODES
    from sparse_ext.losses.nnpu import MODES, NONNEGATIVE, PRIOR_MODES, SURROGATES

    sparse = cfg.MODEL.SPARSE
    errors: List[str] = []
    for key in ("ROI_LOSS", "RPN_LOSS"):
        # the message lists the names as check_loss_name does; the case is free
        loss = sparse[key].lower() if isinstance(sparse[key], str) else sparse[key]
        _check_choice(errors, f"MODEL.SPARSE.{key}", loss, VALID_LOSSES)
    _check_number(
        errors,
        "MODEL.SPARSE.ANNOTATED_FRACTION",
        sparse.ANNOTATED_FRACTION,
        0.0,
        1.0,
        lo_open=True,
        allowed=(0.0,),
        what="0: the training datasets' sparse_fraction",
    )

    ece = sparse.ECE
    _check_schedule(errors, "MODEL.SPARSE.ECE.SCHEDULE", ece.SCHEDULE, "rho, a confidence")
    _check_schedule(errors, "MODEL.SPARSE.ECE.SAMPLING", ece.SAMPLING, "a keep probability")
    _check_choice(errors, "MODEL.SPARSE.ECE.CONFIDENCE", ece.CONFIDENCE, CONFIDENCE_MODES)
    _check_number(errors, "MODEL.SPARSE.ECE.FOCAL_ALPHA", ece.FOCAL_ALPHA, 0.0)
    _check_number(errors, "MODEL.SPARSE.ECE.FOCAL_GAMMA", ece.FOCAL_GAMMA, 0.0)
    _check_number(
        errors,
        "MODEL.SPARSE.ECE.EXCLUSION_BUDGET",
        ece.EXCLUSION_BUDGET,
        0.0,
        1.0,
        allowed=(-1.0, ESTIMATED_BUDGET),
        what="a share of the unannotated samples; -1: pi_u from ANNOTATED_FRACTION; "
        "-2: pi_u estimated per batch",
    )
    _check_number(
        errors,
        "MODEL.SPARSE.ECE.KEEP_BACKGROUND_IOU",
        ece.KEEP_BACKGROUND_IOU,
        0.0,
        1.0,
        hi_open=True,
        what="an IoU with an annotation; 0: off",
    )
    _check_number(
        errors,
        "MODEL.SPARSE.ECE.KEEP_BACKGROUND_SCORE",
        ece.KEEP_BACKGROUND_SCORE,
        0.0,
        1.0,
        hi_open=True,
        what="a foreground score; 0: off",
    )
    if ece.KEEP_BACKGROUND_SCORE > 0 and not ece.KEEP_BACKGROUND_IOU > 0:
        errors.append(
            f"MODEL.SPARSE.ECE.KEEP_BACKGROUND_SCORE = {ece.KEEP_BACKGROUND_SCORE!r} applies the "
            "KEEP_BACKGROUND_IOU rule around detections: set KEEP_BACKGROUND_IOU > 0 too"
        )
    # where a bound acts: the ROI head's ECE, the RPN's unless the budget is the ROI-only -2
    ece_heads = {k for k in ("ROI_LOSS", "RPN_LOSS") if str(sparse[k]).lower() == "ece"}
    if ece.EXCLUSION_BUDGET == ESTIMATED_BUDGET:
        ece_heads.discard("RPN_LOSS")
    if ece.EXCLUSION_BUDGET != 1.0 and ece_heads and ece.CONFIDENCE != "foreground":
        errors.append(
            f"MODEL.SPARSE.ECE.EXCLUSION_BUDGET = {ece.EXCLUSION_BUDGET!r} ranks the foreground "
            f"confidence: it needs CONFIDENCE 'foreground', not {ece.CONFIDENCE!r} (or "
            "EXCLUSION_BUDGET 1: no bound, the paper's Eq. 7)"
        )

    pu = sparse.PU
    _check_number(
        errors,
        "MODEL.SPARSE.PU.PRIOR",
        pu.PRIOR,
        0.0,
        1.0,
        lo_open=True,
        hi_open=True,
        what="the class prior pi",
    )
    _check_number(
        errors,
        "MODEL.SPARSE.PU.RPN_PRIOR",
        pu.RPN_PRIOR,
        0.0,
        1.0,
        lo_open=True,
        hi_open=True,
        allowed=(0.0,),
        what="the RPN's class prior; 0: use PRIOR",
    )
    _check_choice(errors, "MODEL.SPARSE.PU.MODE", pu.MODE, MODES)
    _check_choice(errors, "MODEL.SPARSE.PU.PRIOR_MODE", pu.PRIOR_MODE, PRIOR_MODES)
    _check_choice(errors, "MODEL.SPARSE.PU.SURROGATE", pu.SURROGATE, SURROGATES)
    if pu.PRIOR_MODE == "sampled" and pu.MODE != "detection":
        errors.append(
            f"MODEL.SPARSE.PU.MODE = {pu.MODE!r}: PRIOR_MODE 'sampled' needs MODE 'detection'"
        )
    for key in ("UNLABELED_PRIOR", "RPN_UNLABELED_PRIOR"):
        _check_number(
            errors,
            f"MODEL.SPARSE.PU.{key}",
            pu[key],
            0.0,
            1.0,
            hi_open=True,
            allowed=(-1.0,),
            what="pi_u; -1: from ANNOTATED_FRACTION and the object share",
        )
    for key in ("OBJECT_SHARE", "RPN_OBJECT_SHARE"):
        _check_number(errors, f"MODEL.SPARSE.PU.{key}", pu[key], 0.0, 1.0, hi_open=True)
    _check_choice(errors, "MODEL.SPARSE.PU.NONNEGATIVE", pu.NONNEGATIVE, NONNEGATIVE)
    _check_number(errors, "MODEL.SPARSE.PU.BETA", pu.BETA, 0.0)
    _check_number(errors, "MODEL.SPARSE.PU.GAMMA", pu.GAMMA, 0.0, 1.0, what="Kiryo et al.")

    bde = sparse.BDE
    _check_number(errors, "MODEL.SPARSE.BDE.IOU_THRESH", bde.IOU_THRESH, 0.0, 1.0, lo_open=True)
    _check_number(errors, "MODEL.SPARSE.BDE.SCORE_THRESH", bde.SCORE_THRESH, 0.0, 1.0)

    focal = sparse.FOCAL
    _check_number(
        errors,
        "MODEL.SPARSE.FOCAL.ALPHA",
        focal.ALPHA,
        0.0,
        1.0,
        allowed=(-1.0,),
        what="-1: no alpha weighting, fvcore's convention",
    )
    _check_number(errors, "MODEL.SPARSE.FOCAL.GAMMA", focal.GAMMA, 0.0)
    _raise(errors, "MODEL.SPARSE")


def validate_sparse_test_config(cfg: CN) -> None:
    """Check ``cfg.TEST.SPARSE`` (the evaluator's thresholds); raises one ValueError like
    :func:`validate_sparse_config`."""
    test = cfg.TEST.SPARSE
    errors: List[str] = []
    _check_number(errors, "TEST.SPARSE.IOU_THRESH", test.IOU_THRESH, 0.0, 1.0, lo_open=True)
    _check_number(errors, "TEST.SPARSE.SCORE_THRESH", test.SCORE_THRESH, 0.0, 1.0)
    for key in ("SCORE_THRESHOLDS", "F1_THRESHOLDS"):
        thresholds = test[key]
        if isinstance(thresholds, (list, tuple)) and len(thresholds):
            for i, t in enumerate(thresholds):
                _check_number(errors, f"TEST.SPARSE.{key}[{i}]", t, 0.0, 1.0)
        else:
            errors.append(
                f"TEST.SPARSE.{key} = {thresholds!r}: must be a non-empty list of numbers in [0, 1]"
            )
    _check_number(
        errors, "TEST.SPARSE.NMS_THRESH", test.NMS_THRESH, 0.0, 1.0, what="0: no extra NMS"
    )
    _raise(errors, "TEST.SPARSE")


def build_ece_loss(
    cfg: CN, *, use_sigmoid: bool, reduction: str, unknown: Optional[List[str]] = None
):
    """The ExclusiveCrossEntropy module configured by ``MODEL.SPARSE.ECE`` (the RPN's when
    ``use_sigmoid``).

    Raises:
        ValueError: EXCLUSION_BUDGET -1 and no annotated fraction known; with ``unknown`` given
            the message is appended to it instead and the module has no bound (not to be trained).
    """
    from sparse_ext.losses import ExclusiveCrossEntropy

    ece = cfg.MODEL.SPARSE.ECE
    # None also with ESTIMATED_BUDGET: the ROI head passes its budget per call, the RPN has none
    budget: Optional[float] = None
    if ece.EXCLUSION_BUDGET == -1.0:
        stage = "rpn" if use_sigmoid else "roi"
        budget = _unlabeled_prior_of(cfg, stage, "ECE.EXCLUSION_BUDGET", unknown)
    elif 0.0 <= ece.EXCLUSION_BUDGET < 1.0:
        budget = float(ece.EXCLUSION_BUDGET)
    focal_on = ece.FOCAL_GAMMA != 0.0 or ece.FOCAL_ALPHA != 1.0
    sampling = _build_schedule(ece.SAMPLING, "MODEL.SPARSE.ECE.SAMPLING")
    sampling_off = ece.SAMPLING.TYPE.lower() == "constant" and ece.SAMPLING.VALUE == 1.0
    return ExclusiveCrossEntropy(
        schedule=_build_schedule(ece.SCHEDULE, "MODEL.SPARSE.ECE.SCHEDULE"),
        sampling_schedule=None if sampling_off else sampling,
        use_sigmoid=use_sigmoid,
        confidence=ece.CONFIDENCE,
        focal_alpha=ece.FOCAL_ALPHA if focal_on else None,
        focal_gamma=ece.FOCAL_GAMMA if focal_on else None,
        exclusion_budget=budget,
        ignore_index=-1,  # Detectron2's targets are never ignored here; -1 frees class 255
        reduction=reduction,
    )


def annotated_fraction(cfg: CN) -> Optional[float]:
    """The annotated fraction f: ``MODEL.SPARSE.ANNOTATED_FRACTION`` when > 0, else the
    ``sparse_fraction`` that the training datasets' metadata record (``register_partial_coco``
    copies the COCO file's ``info.sparse_fraction``); None when none records one.

    Raises:
        ValueError: the training datasets record different fractions (set the key).
    """
    if cfg.MODEL.SPARSE.ANNOTATED_FRACTION > 0:
        return float(cfg.MODEL.SPARSE.ANNOTATED_FRACTION)
    from detectron2.data import MetadataCatalog

    recorded = {
        name: MetadataCatalog.get(name).get("sparse_fraction", None) for name in cfg.DATASETS.TRAIN
    }
    values = {float(v) for v in recorded.values() if v is not None}
    if len(values) > 1:
        raise ValueError(
            f"the training datasets record different annotated fractions {recorded}: set "
            "MODEL.SPARSE.ANNOTATED_FRACTION"
        )
    return values.pop() if values else None


def pu_prior(cfg: CN, stage: str, unknown: Optional[List[str]] = None) -> Optional[float]:
    """The ``prior`` argument of ``nnpu_loss`` for the ROI head (``stage="roi"``) or the RPN.

    PRIOR_MODE "fixed": PRIOR (the RPN: RPN_PRIOR when > 0). "sampled": pi_u, UNLABELED_PRIOR
    (RPN_UNLABELED_PRIOR) when >= 0, else ``unlabeled_prior(f, q)`` =
    (1 - f) q / (1 - f q) with f from :func:`annotated_fraction` and q = OBJECT_SHARE
    (RPN_OBJECT_SHARE).

    Raises:
        ValueError: "sampled" with pi_u to derive and no annotated fraction known; with
            ``unknown`` given the message is appended to it instead and None returned.
    """
    pu = cfg.MODEL.SPARSE.PU
    rpn = stage == "rpn"
    if pu.PRIOR_MODE != "sampled":
        return pu.RPN_PRIOR if rpn and pu.RPN_PRIOR > 0 else pu.PRIOR
    pi_u = pu.RPN_UNLABELED_PRIOR if rpn else pu.UNLABELED_PRIOR
    if pi_u >= 0:
        return pi_u
    key = "RPN_UNLABELED_PRIOR" if rpn else "UNLABELED_PRIOR"
    return _unlabeled_prior_of(cfg, stage, f"PU.PRIOR_MODE 'sampled' with PU.{key} -1", unknown)


def _unlabeled_prior_of(
    cfg: CN, stage: str, user: str, unknown: Optional[List[str]] = None
) -> Optional[float]:
    """pi_u of the ROI head (``stage="roi"``) or the RPN derived from the annotated fraction:
    ``unlabeled_prior(f, q)`` = (1 - f) q / (1 - f q) with f from :func:`annotated_fraction` and
    q = PU.OBJECT_SHARE (RPN_OBJECT_SHARE).

    Raises:
        ValueError: no annotated fraction known (``user`` names the setting that needs it);
            with ``unknown`` given the message is appended to it instead and None returned.
    """
    from sparse_ext.losses.nnpu import unlabeled_prior

    fraction = annotated_fraction(cfg)
    if fraction is None:
        message = (
            f"MODEL.SPARSE.{user} derives pi_u from the annotated fraction, which is unknown: "
            "set MODEL.SPARSE.ANNOTATED_FRACTION, or train on COCO files with "
            "info.sparse_fraction (sparse-ext convert subsample)"
        )
        if unknown is None:
            raise ValueError(message)
        unknown.append(message)
        return None
    pu = cfg.MODEL.SPARSE.PU
    return unlabeled_prior(fraction, pu.RPN_OBJECT_SHARE if stage == "rpn" else pu.OBJECT_SHARE)


def sparse_loss_options(cfg: CN, stage: str) -> Dict[str, Any]:
    """Constructor arguments of SparseFastRCNNOutputLayers (``stage="roi"``) or SparseRPN
    (``stage="rpn"``) from ``cfg.MODEL.SPARSE``, after :func:`validate_sparse_config`.

    A pi_u to derive from an unknown annotated fraction (PU.PRIOR_MODE "sampled", ECE
    EXCLUSION_BUDGET -1) does not stop the model from being built, for inference, which reads
    neither: ``unknown_fraction`` carries the error, which the head raises at its first loss.
    """
    if stage not in ("roi", "rpn"):
        raise ValueError(f"stage must be 'roi' or 'rpn', got {stage!r}")
    validate_sparse_config(cfg)
    sparse = cfg.MODEL.SPARSE
    key = "MODEL.SPARSE.ROI_LOSS" if stage == "roi" else "MODEL.SPARSE.RPN_LOSS"
    loss = check_loss_name(sparse.ROI_LOSS if stage == "roi" else sparse.RPN_LOSS, key)
    unknown: List[str] = []
    options: Dict[str, Any] = {
        "loss_name": loss,
        "max_iter": cfg.SOLVER.MAX_ITER,
        "pu_options": {
            "prior": pu_prior(cfg, stage, unknown) if loss == "nnpu" else sparse.PU.PRIOR,
            "mode": sparse.PU.MODE,
            "nonnegative": sparse.PU.NONNEGATIVE,
            "beta": sparse.PU.BETA,
            "gamma": sparse.PU.GAMMA,
            "prior_mode": sparse.PU.PRIOR_MODE,
            "surrogate": sparse.PU.SURROGATE,
        },
        "focal_options": {"alpha": sparse.FOCAL.ALPHA, "gamma": sparse.FOCAL.GAMMA},
        "bde_options": {
            "iou_threshold": sparse.BDE.IOU_THRESH,
            "score_threshold": sparse.BDE.SCORE_THRESH,
        },
        "ece_loss": None,
    }
    if loss == "ece":
        # ROI: softmax over K+1 classes, mean over proposals like Detectron2's cross_entropy.
        # RPN: sigmoid objectness, summed and divided by Detectron2's RPN normaliser.
        options["ece_loss"] = build_ece_loss(
            cfg,
            use_sigmoid=stage == "rpn",
            reduction="mean" if stage == "roi" else "sum",
            unknown=unknown,
        )
        if stage == "roi" and sparse.ECE.KEEP_BACKGROUND_IOU > 0:
            options["ece_keep_background_iou"] = float(sparse.ECE.KEEP_BACKGROUND_IOU)
            if sparse.ECE.KEEP_BACKGROUND_SCORE > 0:
                options["ece_keep_background_score"] = float(sparse.ECE.KEEP_BACKGROUND_SCORE)
                options["ece_foreground_iou"] = float(cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[-1])
        if stage == "roi" and sparse.ECE.EXCLUSION_BUDGET == ESTIMATED_BUDGET:
            from sparse_ext.losses.fraction import fallback_annotated_fraction

            # the default: like the segmentation recipes, an unknown f falls back with a warning
            options["ece_budget_fraction"] = annotated_fraction(cfg) or fallback_annotated_fraction(
                f"MODEL.SPARSE.ECE.EXCLUSION_BUDGET {ESTIMATED_BUDGET:g}",
                "MODEL.SPARSE.ANNOTATED_FRACTION",
            )
    options["unknown_fraction"] = unknown[0] if unknown else None
    return options


# -- config files -----------------------------------------------------------------------------


def model_zoo_config_file(config_path: str) -> str:
    """Path of a config in the installed detectron2's model zoo, e.g.
    ``"COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"``.

    Uses ``detectron2.model_zoo.get_config_file`` when it imports (it needs pkg_resources), else
    looks next to the package: ``detectron2/model_zoo/configs`` (pip install) or the ``configs``
    folder of a source checkout on PYTHONPATH.
    """
    try:
        from detectron2 import model_zoo

        return model_zoo.get_config_file(config_path)
    except (ImportError, RuntimeError):
        pass
    import detectron2

    pkg = os.path.dirname(os.path.abspath(detectron2.__file__))
    for root in (
        os.path.join(pkg, "model_zoo", "configs"),
        os.path.join(pkg, os.pardir, "configs"),
    ):
        path = os.path.normpath(os.path.join(root, config_path))
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"'{config_path}' is not in the model zoo of the detectron2 at {pkg}; install detectron2 "
        "from source (pip install 'git+https://github.com/facebookresearch/detectron2.git')"
    )


def _merge_dicts(src: Dict[str, Any], dst: Dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge_dicts(v, dst[k])
        else:
            dst[k] = v


def _load_yaml(path: str) -> Dict[str, Any]:
    from detectron2.config import CfgNode

    with open(path) as f:
        data = yaml.safe_load(f) or {}
    bases = data.pop("_BASE_", None)
    if bases is None:
        return data
    merged: Dict[str, Any] = {}
    for base in bases if isinstance(bases, list) else [bases]:
        if base.startswith(MODEL_ZOO_PREFIX):
            zoo_file = model_zoo_config_file(base[len(MODEL_ZOO_PREFIX) :])
            _merge_dicts(CfgNode.load_yaml_with_base(zoo_file, allow_unsafe=False), merged)
        else:
            base_path = os.path.join(os.path.dirname(path), os.path.expanduser(base))
            _merge_dicts(_load_yaml(base_path), merged)
    _merge_dicts(data, merged)
    return merged


def resolve_config_file(config_file: str) -> str:
    """Local path of a config file: ``model_zoo://X`` is X in the installed detectron2's model zoo
    (:func:`model_zoo_config_file`), anything else a path.

    Raises:
        FileNotFoundError: no such file (for a path that names a model-zoo config, the message
            suggests the ``model_zoo://`` form).
    """
    if config_file.startswith(MODEL_ZOO_PREFIX):
        return model_zoo_config_file(config_file[len(MODEL_ZOO_PREFIX) :])
    path = os.path.expanduser(config_file)
    if os.path.isfile(path):
        return path
    hint = ""
    if not os.path.isabs(path):
        try:
            model_zoo_config_file(path)
            hint = f"; for Detectron2's model-zoo config write {MODEL_ZOO_PREFIX}{config_file}"
        except (FileNotFoundError, RuntimeError):
            pass
    raise FileNotFoundError(f"config file not found: {config_file}{hint}")


def load_sparse_config(config_file: str, cfg: Optional[CN] = None) -> CN:
    """Merge a YAML config into ``cfg`` (default: ``get_cfg()`` + :func:`add_sparse_config`).

    Like ``cfg.merge_from_file``, and ``model_zoo://X`` (as ``config_file`` or as a ``_BASE_``)
    names the config X of the installed detectron2's model zoo (what
    ``detectron2.model_zoo.get_config_file(X)`` returns, e.g.
    ``model_zoo://COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml``), so our configs reuse
    Detectron2's recipe without copying it and without a source clone.
    """
    from detectron2.config import get_cfg

    path = resolve_config_file(config_file)
    if cfg is None:
        cfg = get_cfg()
        add_sparse_config(cfg)
    cfg.merge_from_other_cfg(CN(_load_yaml(path)))
    return cfg
