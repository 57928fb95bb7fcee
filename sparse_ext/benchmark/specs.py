"""What each benchmark run trains: task -> loss name -> config file + overrides, and run profiles.

Seg losses all run the same MMSeg UNet (``configs/mmseg``): the baseline's config, MMSeg's own
FocalLoss config, sparse_ext's ECE config (the schedule picked by name through an override),
ECE+focal, nnPU, and the reference ``ece-loss`` package's loss (``BenchmarkReferenceECELoss``)
swapped into the CE config as an external peer. ``--quick`` profiles: small random crops, a
narrow UNet (base_channels 16), training at the frames' native scale, AdamW (lr 1e-3 with the
config's poly decay); full mode keeps the config's model, pipeline and optimiser. LSR runs the
``unet_s5-d16_lsr-*`` configs with the reference LSR code's interval distance (plain names), the
published Eq. 5/9 (``_eq5``) or the Gaussian form (``_gauss``), CE on the blocks' full masks
(``ce_full``, the ceiling) and the untrained ``lowres`` and ``threshold`` baselines; max-min
runs ``maxmin_unet_r18_eem.py`` with the rows of Belharbi et al.'s ablation (Table 4).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from sparse_ext.losses.exclusive_cross_entropy import background_keep_prob
from sparse_ext.losses.fraction import FALLBACK_ANNOTATED_FRACTION

__all__ = [
    "DEFAULT_FRACTIONS",
    "DEFAULT_LOSSES",
    "LOSSES",
    "LossSpec",
    "NO_FRACTIONS",
    "TASKS",
    "parse_losses",
    "profile_for",
    "run_profile",
]

TASKS = ("seg", "det", "lsr", "maxmin")
DEFAULT_FRACTIONS = (10, 30, 50, 100)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_ROOT = os.path.join(REPO_ROOT, "configs")


@dataclass(frozen=True)
class LossSpec:
    """One benchmarked loss: the config it trains and the config lines that differ."""

    name: str
    config: str  # relative to configs/
    overrides: Dict[str, Any] = field(default_factory=dict)
    description: str = ""
    # extra overrides that depend on the annotation fraction (percent)
    per_fraction: Optional[Callable[[int], Dict[str, Any]]] = None
    # LSR: train on the "& high res" blocks alone (sparse_ext.benchmark.lsr.prepare_highres)
    highres_only: bool = False

    @property
    def config_path(self) -> str:
        return os.path.join(CONFIG_ROOT, self.config)

    def overrides_for(self, fraction: int) -> Dict[str, Any]:
        extra = self.per_fraction(fraction) if self.per_fraction else {}
        return {**self.overrides, **extra}


def _both_heads(loss: Dict[str, Any], aux_weight: float = 0.4) -> Dict[str, Any]:
    """Replace the loss of the decode head and the auxiliary head (weight 0.4, as MMSeg's UNet)."""
    return {
        "model.decode_head.loss_decode": dict(_delete_=True, **loss),
        "model.auxiliary_head.loss_decode": dict(
            _delete_=True, **{**loss, "loss_weight": aux_weight}
        ),
    }


_ECE = "mmseg/unet_s5-d16_ece_partial-nuclei.py"
_SAMPLED_CE = "mmseg/unet_s5-d16_sampled-ce_partial-nuclei.py"


def matched_sample_prob(fraction: int) -> float:
    """Background-sampling probability for ECE's unannotated pixels matched to the annotation
    fraction f: :func:`background_keep_prob` with margin 0.5, 0.5 * f / (1 - f) capped at 1
    (10 % -> 0.056, 30 % -> 0.214, 50 % -> 0.5).

    An unannotated nucleus pixel then carries half the expected background weight of the
    annotated-positive weight, (1 - f) * s = f / 2, so the cross-entropy optimum of a nucleus
    pixel is p(nucleus) = f / (f + f / 2) = 2/3, above rho = 0.5: ECE's exclusion then takes
    over instead of the background collapse seen with plain CE/ECE at low fractions.
    """
    return background_keep_prob(fraction / 100.0, margin=0.5)


def _misspecified(name: str, config: str, what: str) -> Tuple[LossSpec, LossSpec]:
    """``<name>_f_half`` and ``<name>_f_double``: the recipe told f / 2 and 2 f (at most 1) at
    the run's true annotated fraction f."""
    return (
        LossSpec(
            f"{name}_f_half",
            config,
            {},
            f"{what} told half the true annotated fraction",
            per_fraction=lambda f: _ece_lines(annotated_fraction=f / 200),
        ),
        LossSpec(
            f"{name}_f_double",
            config,
            {},
            f"{what} told twice the true annotated fraction (at most 1)",
            per_fraction=lambda f: _ece_lines(annotated_fraction=min(f / 50, 1.0)),
        ),
    )


def _keep_prob(fraction: float, margin: float) -> float:
    """:func:`sparse_ext.losses.background_keep_prob` rounded for a config line."""
    return round(background_keep_prob(fraction, margin), 4)


def _ece_lines(**options: Any) -> Dict[str, Any]:
    """The same ECE options on the decode and the auxiliary head."""
    return {
        f"model.{head}.loss_decode.{key}": value
        for head in ("decode_head", "auxiliary_head")
        for key, value in options.items()
    }


def _sampled(fraction: int, rho: Optional[float] = None) -> Dict[str, Any]:
    prob = round(matched_sample_prob(fraction), 4)
    out: Dict[str, Any] = {}
    for head in ("decode_head", "auxiliary_head"):
        out[f"model.{head}.loss_decode.sampling_schedule"] = prob
        if rho is not None:
            out[f"model.{head}.loss_decode.schedule"] = rho
    return out


# LSR blocks trained with cross-entropy on their masks (the LSR config, its loss and labels swapped)
_CE_ON_BLOCK_MASKS: Dict[str, Any] = {
    "model.decode_head.loss_decode": dict(
        _delete_=True, type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0
    ),
    "train_dataloader.dataset.data_prefix": dict(
        img_path="train/blocks", seg_map_path="train/masks"
    ),
    "train_dataloader.dataset.pipeline": [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations"),
        dict(type="RandomFlip", prob=[0.25, 0.25], direction=["horizontal", "vertical"]),
        dict(type="PackSegInputs"),
    ],
}
_DET_TINY = "detectron2/faster_rcnn_R_18_FPN_tiny_cpu.yaml"
_DET_NNPU = {"MODEL.SPARSE.ROI_LOSS": "nnpu", "MODEL.SPARSE.RPN_LOSS": "ce"}
# ECE as published (Panteli et al., ICCV 2021, Eq. 7): no bound on the exclusions
_DET_ECE = {
    "MODEL.SPARSE.ROI_LOSS": "ece",
    "MODEL.SPARSE.RPN_LOSS": "ce",
    "MODEL.SPARSE.ECE.EXCLUSION_BUDGET": 1.0,
}
_ANNEAL_HOOK = {"custom_hooks": [dict(type="SparseLossAnnealingHook")]}

LOSSES: Dict[str, Dict[str, LossSpec]] = {
    "seg": {
        spec.name: spec
        for spec in (
            LossSpec("ce", "mmseg/unet_s5-d16_ce_partial-nuclei.py", {}, "cross-entropy (MMSeg)"),
            LossSpec("focal", "mmseg/unet_s5-d16_focal_partial-nuclei.py", {}, "MMSeg FocalLoss"),
            LossSpec(
                "ece",
                _ECE,
                {},
                "ECE, rho warm-up 1 -> 0.68, keep probability from the annotated fraction (the "
                "shipped recipe)",
            ),
            LossSpec(
                "ece_paper",
                _ECE,
                _ece_lines(sampling_schedule=1.0, schedule=0.5),
                "ECE as published: rho 0.5, every unannotated pixel kept",
            ),
            # the recipe told half / twice the true annotated fraction
            *_misspecified("ece", _ECE, "ECE recipe"),
            LossSpec(
                "ece_table2",
                _ECE,
                _ece_lines(schedule="paper_table2"),
                "ECE, paper Table 2 sigmoid schedule",
            ),
            LossSpec(
                "ece_refcode",
                _ECE,
                _ece_lines(
                    schedule="reference_exclusivity", sampling_schedule="reference_sampling"
                ),
                "ECE, reference code's schedules",
            ),
            LossSpec("ece_focal", "mmseg/unet_s5-d16_ece-focal_partial-nuclei.py", {}, "ECE+focal"),
            # the ResNet recipe: MMSeg's FCN on ResNetV1c-18 (random init), same data and budget
            LossSpec(
                "fcn_ce",
                "mmseg/fcn_r18-d8_ce_partial-nuclei.py",
                {},
                "FCN ResNetV1c-18, cross-entropy",
            ),
            LossSpec(
                "fcn_ce_sampled",
                "mmseg/fcn_r18-d8_sampled-ce_partial-nuclei.py",
                {},
                "FCN ResNetV1c-18, the recommended recipe (CE + keep probability from f)",
            ),
            LossSpec(
                "fcn_ece",
                "mmseg/fcn_r18-d8_ece_partial-nuclei.py",
                {},
                "FCN ResNetV1c-18, the ECE recipe (keep probability from the annotated fraction)",
            ),
            LossSpec(
                "nnpu",
                "mmseg/unet_s5-d16_nnpu_partial-nuclei.py",
                {},
                "nnPU on pixels, prior from the annotated fraction (the shipped recipe)",
            ),
            # no config: nothing is trained (sparse_ext.benchmark.seg.threshold_from_sparse_labels)
            LossSpec("threshold", "", {}, "floor: one intensity threshold from the sparse labels"),
            LossSpec(
                "ece_sampled",
                _ECE,
                {},
                "ECE rho 0.5 + background sampling matched to the fraction",
                per_fraction=_sampled,
            ),
            LossSpec(
                "ce_sampled",
                _SAMPLED_CE,
                {},
                "CE + the keep probability f gives (= ECE with rho 1; the recommended recipe)",
            ),
            *_misspecified("ce_sampled", _SAMPLED_CE, "ce_sampled"),
            LossSpec(
                "ce_sampled_f_fallback",
                _SAMPLED_CE,
                _ece_lines(annotated_fraction=FALLBACK_ANNOTATED_FRACTION),
                "ce_sampled with f unknown: the fallback f the loss assumes (with a warning)",
            ),
            # a smaller keep-probability margin c (background_keep_prob(f, margin=c)): the
            # optimum of an unannotated nucleus pixel 1 / (1 + c) moves from 0.8 to 0.91, and
            # with f over-estimated twice at 30 % from 0.53 to 0.74
            LossSpec(
                "ce_sampled_c010",
                _ECE,
                {},
                "ce_sampled with the keep-probability margin c = 0.1 (rho 1)",
                per_fraction=lambda f: _ece_lines(
                    schedule=1.0, sampling_schedule=_keep_prob(f / 100, 0.1)
                ),
            ),
            LossSpec(
                "ce_sampled_c010_f_double",
                _ECE,
                {},
                "ce_sampled_c010 told twice the true annotated fraction",
                per_fraction=lambda f: _ece_lines(
                    schedule=1.0, sampling_schedule=_keep_prob(min(f / 50, 1.0), 0.1)
                ),
            ),
            LossSpec(
                "ece_pkg",
                "mmseg/unet_s5-d16_ce_partial-nuclei.py",
                {**_both_heads(dict(type="BenchmarkReferenceECELoss")), **_ANNEAL_HOOK},
                "reference ece-loss 1.0.0 package (external peer)",
            ),
        )
    },
    "det": {
        **{
            name: LossSpec(
                name,
                _DET_TINY,
                {"MODEL.SPARSE.ROI_LOSS": name, "MODEL.SPARSE.RPN_LOSS": "ce"},
                f"Faster R-CNN, ROI loss {name}",
            )
            for name in ("ce", "focal", "nnpu", "bde")
        },
        "ece": LossSpec("ece", _DET_TINY, _DET_ECE, "Faster R-CNN, ROI loss ECE as published"),
        # Issue 12's methods, all on the tiny config (whole-model gradient clipping at 10, the
        # same lr, warm-up and iterations); the RPN keeps CE unless the name says otherwise.
        "pu_classic": LossSpec(
            "pu_classic",
            _DET_TINY,
            {**_DET_NNPU, "MODEL.SPARSE.PU.MODE": "classic"},
            "Faster R-CNN, ROI loss classic nnPU (E_x over unlabelled ROIs only), prior 0.04",
        ),
        # the paper's fixed-pi grid 0.02:0.01:0.06 (nnpu_pi04 is "nnpu" under the grid's name),
        # for the selection of pi by validation recall (tools/det_recipe_checks.py)
        **{
            f"nnpu_pi{round(pi * 100):02d}": LossSpec(
                f"nnpu_pi{round(pi * 100):02d}",
                _DET_TINY,
                {**_DET_NNPU, "MODEL.SPARSE.PU.PRIOR": pi},
                f"Faster R-CNN, ROI loss nnpu with fixed prior {pi}",
            )
            for pi in (0.02, 0.03, 0.04, 0.05, 0.06)
        },
        # per-batch prior pi_b = Np/N + (Nu/N) pi_u, pi_u from the COCO file's
        # info.sparse_fraction (sparse_ext.losses.nnpu.unlabeled_prior; CE at 100 %)
        "nnpu_sampled": LossSpec(
            "nnpu_sampled",
            _DET_TINY,
            {**_DET_NNPU, "MODEL.SPARSE.PU.PRIOR_MODE": "sampled"},
            "Faster R-CNN, ROI loss nnpu with the sampled prior",
        ),
        "nnpu_sampled_sigmoid": LossSpec(
            "nnpu_sampled_sigmoid",
            _DET_TINY,
            {
                **_DET_NNPU,
                "MODEL.SPARSE.PU.PRIOR_MODE": "sampled",
                "MODEL.SPARSE.PU.SURROGATE": "sigmoid",
            },
            "Faster R-CNN, ROI loss nnpu, sampled prior, bounded sigmoid loss",
        ),
        "nnpu_sampled_rpn": LossSpec(
            "nnpu_sampled_rpn",
            _DET_TINY,
            {**_DET_NNPU, "MODEL.SPARSE.RPN_LOSS": "nnpu", "MODEL.SPARSE.PU.PRIOR_MODE": "sampled"},
            "Faster R-CNN, ROI and RPN loss nnpu with the sampled prior (each its own pi_u)",
        ),
        # ECE with a higher confidence threshold: the paper's Table 2 schedule (Panteli et al.,
        # ICCV 2021: rho 0.5 -> 0.68 over the first sixth of training) and a constant 0.8; more
        # unannotated proposals keep their background term (precision on the H&E tiles)
        "ece_table2": LossSpec(
            "ece_table2",
            _DET_TINY,
            {**_DET_ECE, "MODEL.SPARSE.ECE.SCHEDULE.TYPE": "paper_table2"},
            "Faster R-CNN, ROI loss ECE with the paper's Table 2 rho schedule",
        ),
        "ece_rho08": LossSpec(
            "ece_rho08",
            _DET_TINY,
            {**_DET_ECE, "MODEL.SPARSE.ECE.SCHEDULE.VALUE": 0.8},
            "Faster R-CNN, ROI loss ECE with constant rho 0.8",
        ),
        # ECE whose exclusions are bounded by pi_u, the share of true objects expected among the
        # unannotated proposals (from the annotated fraction, as the nnPU sampled prior): a guard
        # against the all-foreground collapse (sparse_ext.losses.beyond_exclusion_budget).
        "ece_budget": LossSpec(
            "ece_budget",
            _DET_TINY,
            {**_DET_ECE, "MODEL.SPARSE.ECE.EXCLUSION_BUDGET": -1.0},
            "Faster R-CNN, ROI loss ECE with exclusions bounded by pi_u",
        ),
        # The same bound with pi_u estimated per batch from the proposals on annotations
        # (sparse_ext.losses.estimated_unlabeled_prior): it follows the RPN as it learns to put
        # proposals on nuclei, where the fixed object share 0.06 measured early in training
        # undercounts them 2-8x by the end of it (tools/det_object_share.py). The shipped
        # recipe (faster_rcnn_R_18_FPN_tiny_cpu_sparse.yaml): -2 is the default.
        "ece_budget_est": LossSpec(
            "ece_budget_est",
            _DET_TINY,
            {**_DET_ECE, "MODEL.SPARSE.ECE.EXCLUSION_BUDGET": -2.0},
            "Faster R-CNN, ROI loss ECE with exclusions bounded by pi_u estimated per batch "
            "(the shipped recipe)",
        ),
        # The shipped bound, and the unannotated proposals that overlap an annotation at IoU >=
        # 0.1 (badly placed boxes on labelled nuclei) keep their background term: excluded, they
        # teach the classifier to score fragments of nuclei (docs/benchmarks, Detection).
        "ece_keep_bg": LossSpec(
            "ece_keep_bg",
            _DET_TINY,
            {
                **_DET_ECE,
                "MODEL.SPARSE.ECE.EXCLUSION_BUDGET": -2.0,
                "MODEL.SPARSE.ECE.KEEP_BACKGROUND_IOU": 0.1,
            },
            "Faster R-CNN, ROI loss ECE with the estimated bound; proposals overlapping an "
            "annotation keep their background term",
        ),
        # ... and around the model's own confident detections of unannotated nuclei (their
        # regressed boxes at score >= 0.5): a proposal on part of a detected nucleus stays
        # background instead of being excluded.
        "ece_keep_det": LossSpec(
            "ece_keep_det",
            _DET_TINY,
            {
                **_DET_ECE,
                "MODEL.SPARSE.ECE.EXCLUSION_BUDGET": -2.0,
                "MODEL.SPARSE.ECE.KEEP_BACKGROUND_IOU": 0.1,
                "MODEL.SPARSE.ECE.KEEP_BACKGROUND_SCORE": 0.5,
            },
            "Faster R-CNN, ROI loss ECE with the estimated bound; proposals overlapping an "
            "annotation or a confident detection keep their background term",
        ),
        # The shipped recipe with a partial-annotation loss in the RPN too: with CE there the
        # anchors on unannotated nuclei are negatives, and the proposals of a model trained on
        # 10 % of the H&E tiles' nuclei cover a quarter of the test nuclei at IoU 0.5.
        **{
            f"ece_rpn_{rpn}": LossSpec(
                f"ece_rpn_{rpn}",
                _DET_TINY,
                {
                    **_DET_ECE,
                    "MODEL.SPARSE.ECE.EXCLUSION_BUDGET": -2.0,
                    "MODEL.SPARSE.RPN_LOSS": rpn,
                },
                f"Faster R-CNN, ROI loss ECE with the estimated bound, RPN loss {rpn}",
            )
            for rpn in ("ece", "bde")
        },
        # A fixed prior of 0.25 is the positive quota the ROI sampler fills with every nucleus
        # annotated (8 of 32, measured), not the prior at lower fractions: at 10 % the true share
        # among the sampled ROIs measured about 0.05-0.065 early in training (issue 12). Not a
        # default: in the quick profile without gradient clipping it diverged at 10 %.
        "nnpu_pi25": LossSpec(
            "nnpu_pi25",
            _DET_TINY,
            {
                "MODEL.SPARSE.ROI_LOSS": "nnpu",
                "MODEL.SPARSE.RPN_LOSS": "ce",
                "MODEL.SPARSE.PU.PRIOR": 0.25,
            },
            "Faster R-CNN, ROI loss nnpu with prior 0.25",
        ),
    },
    "lsr": {
        # the reference LSR code's interval distance (the default) under the plain mode names;
        # Eq. 5/9 as published (_eq5: collapsed minimum) and the Gaussian form (_gauss) to compare
        **{
            f"{name}{suffix}": LossSpec(
                f"{name}{suffix}",
                f"mmseg/unet_s5-d16_lsr-{name.replace('_', '-')}_lsr-blocks.py",
                {"model.decode_head.loss_decode.distance": distance},
                f"LSR {name.replace('_', '+')}-instance, {distance} distance",
            )
            for suffix, distance in (("", "reference"), ("_eq5", "eq5"), ("_gauss", "gaussian"))
            for name in ("intra", "inter", "intra_inter")
        },
        # "& high res" (Zhao, Hou et al., Table 3): LSR plus cross-entropy on the full masks of a
        # few blocks (the profile's highres_fraction; sparse_ext.benchmark.lsr.prepare_highres)
        **{
            f"{name}_highres": LossSpec(
                f"{name}_highres",
                "mmseg/unet_s5-d16_lsr-intra-inter-highres_lsr-blocks.py",
                {"model.decode_head.loss_decode.mode": name},
                f"LSR {name.replace('_', '+')}-instance & high res (CE on a few blocks' masks)",
            )
            for name in ("inter", "intra_inter")
        },
        # the ceiling: the same UNet, blocks and budget, cross-entropy on the blocks' full masks
        "ce_full": LossSpec(
            "ce_full",
            "mmseg/unet_s5-d16_lsr-intra-inter_lsr-blocks.py",
            _CE_ON_BLOCK_MASKS,
            "ceiling: cross-entropy on the training blocks' full masks",
        ),
        # the paper's "high res" row: the same on the "& high res" runs' few blocks only, in
        # plain shuffled batches (too few blocks per label to group)
        "highres": LossSpec(
            "highres",
            "mmseg/unet_s5-d16_lsr-intra-inter_lsr-blocks.py",
            {**_CE_ON_BLOCK_MASKS, "train_dataloader.batch_sampler": None},
            'cross-entropy on the masks of the "& high res" runs\' few blocks only',
            highres_only=True,
        ),
        # no config: nothing is trained (sparse_ext.benchmark.lsr.lowres_predictions and
        # threshold_from_block_labels)
        "lowres": LossSpec("lowres", "", {}, "low-resolution model with true block labels"),
        "threshold": LossSpec(
            "threshold", "", {}, "floor: one intensity threshold from the block labels and table"
        ),
    },
    "maxmin": {
        # Belharbi et al.'s GlaS settings throughout (the config's): lambda 1e-7; log-barrier
        # t = min(5 * 1.01^epoch, 10) over the config's 80 epochs (spanned by the iteration
        # budget); Eq. 12 sigma 0.15, omega 5; WILDCAT kmax 0.3, kmin 0 (alpha 0.6 unused)
        **{
            name: LossSpec(
                name,
                "mmseg/maxmin_unet_r18_eem.py",
                {"model.regularizer": regularizer},
                f"max-min, regulariser {regularizer}",
            )
            for name, regularizer in (("eem", "eem"), ("sem", "sem"), ("none", None))
        },
        # the other rows of the paper's ablation (Table 4); "eem" and "sem" above are its
        # "FG + BG (EEM/SEM) + ASC", "none" (FG + ASC) is not one of its rows
        **{
            name: LossSpec(name, "mmseg/maxmin_unet_r18_eem.py", overrides, description)
            for name, overrides, description in (
                (
                    "cam",
                    {"model.objective": "cam"},
                    "Table 4 'Wildcat': classifier-only CAM (the localizer's WILDCAT CE alone)",
                ),
                (
                    "fg",
                    {"model.regularizer": None, "model.size_weight": 0.0},
                    "Table 4 'FG only': CE on x+ and the localizer's CE",
                ),
                (
                    "fg_bg_eem",
                    {"model.regularizer": "eem", "model.size_weight": 0.0},
                    "Table 4 'FG + BG (EEM)': no absolute size constraints",
                ),
                (
                    "fg_bg_sem",
                    {"model.regularizer": "sem", "model.size_weight": 0.0},
                    "Table 4 'FG + BG (SEM)': no absolute size constraints",
                ),
                # not tuned: the top of the paper's lambda sensitivity range (its Fig. 10), where
                # the background term is no longer negligible
                (
                    "eem_lam1e-1",
                    {"model.regularizer": "eem", "model.lam": 0.1},
                    "FG + BG (EEM) + ASC with lambda 0.1 instead of GlaS's 1e-7",
                ),
            )
        },
    },
}
DEFAULT_LOSSES = {
    "seg": ("threshold", "ce", "focal", "ece", "ece_paper", "nnpu", "ce_sampled", "ece_pkg"),
    "det": ("ce", "focal", "ece", "ece_budget_est", "bde", "pu_classic", "nnpu", "nnpu_sampled"),
    "lsr": ("threshold", "lowres", "intra", "inter", "intra_inter", "ce_full"),
    "maxmin": ("cam", "fg", "fg_bg_eem", "eem", "fg_bg_sem", "sem", "none"),
}
# Tasks whose labels are not a fraction of annotated nuclei (block / image labels for every
# block / image): their runs use fraction 100 only.
NO_FRACTIONS = ("lsr", "maxmin")

# A whole HeLa test frame holds up to ~200 nuclei: Detectron2's default caps (100 detections per
# image, the tiny config's 100 proposals) would bound recall near 0.5 whatever the loss.
_DET_TEST_OPTS = {
    "TEST.DETECTIONS_PER_IMAGE": 300,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 1000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 500,
}

# Run profiles. Quick: minutes per run on 2 CPU cores. Full: the configs as written (GPU).
PROFILES: Dict[str, Dict[str, Dict[str, Any]]] = {
    "seg": {
        "quick": dict(
            crop=128,
            native_scale=True,
            batch_size=4,
            unet_base_channels=16,
            optimizer=dict(type="AdamW", lr=1e-3, weight_decay=1e-4),
            iters=300,
        ),
        "full": dict(iters=20000),
    },
    "det": {
        # the tiny CPU Faster R-CNN (ResNet-18, 32-channel FPN, random init) at the frames'
        # native scale: 256 px random crops for training (Detectron2 crops before it resizes,
        # so the resize keeps the crop's 256 px), whole frames for testing, not resized
        # (MIN_SIZE_TEST 0; a fixed size would rescale test frames of another size than HeLa's
        # 700 x 1100, e.g. the 500 px H&E tiles by 1.4, against the scale the model trained at)
        "quick": dict(
            iters=400,
            opts={
                "INPUT.MIN_SIZE_TRAIN": "(256,)",
                "INPUT.MAX_SIZE_TRAIN": 256,
                "INPUT.MIN_SIZE_TEST": 0,
                "INPUT.CROP.ENABLED": True,
                "INPUT.CROP.TYPE": "absolute",
                "INPUT.CROP.SIZE": "(256, 256)",
                "SOLVER.IMS_PER_BATCH": 4,
                **_DET_TEST_OPTS,
            },
            # Dense data (more objects per training crop, in the exhaustive training file, than
            # the threshold; HeLa 12.7, the H&E tiles 46): the tiny config's samplers (32 ROIs per
            # image with a 25 % positive quota, 64 anchors, 100 proposals) see a small share of
            # the objects and CE with every object labelled barely learned in 400 iterations
            # (F1 0.16 on the H&E tiles, docs/benchmarks/history/det_hgsc_small_samplers.csv);
            # these sizes, nearer Detectron2's own, apply there.
            dense=dict(
                objects_per_crop=24.0,
                opts={
                    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 128,
                    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": 256,
                    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 500,
                },
            ),
        ),
        # the R50-FPN recipe configs, one per loss (configs/detectron2/faster_rcnn_R_50_FPN_*.yaml)
        "full": dict(
            iters=20000,
            recipe_configs=True,
            opts={"MODEL.ROI_HEADS.NUM_CLASSES": 1, **_DET_TEST_OPTS},
        ),
    },
    # blocks of 32 px (about one nucleus at HeLa's scale), 10 bins of nucleus fraction,
    # masked scores within 8 px of the reference boundaries; 2 groups of 10 blocks per batch;
    # the "& high res" runs see the masks of 5 % of the blocks.
    # 3000 iterations: at 1500 the HGSC runs still improved at the end and split by seed (intra
    # masked Dice 0.74 / 0.67 / 0.54, inter 0.51 / 0.66 / 0.71; history/lsr_hgsc_1500_iters.csv);
    # the worst two, rerun at 3000, reached 0.71 and 0.71
    "lsr": {
        "quick": dict(
            iters=3000,
            block=32,
            bins=10,
            band_width=8,
            highres_fraction=0.05,
            unet_base_channels=16,
            optimizer=dict(type="AdamW", lr=1e-3, weight_decay=1e-4),
        ),
        "full": dict(iters=20000, block=32, bins=10, band_width=8, highres_fraction=0.05),
    },
    # 64 px tiles, positive from 10 % nucleus pixels; a narrow UNet and ResNet-18
    "maxmin": {
        "quick": dict(
            iters=300,
            crop=64,
            positive_min=0.1,
            unet_base_channels=16,
            batch_size=8,
            optimizer=dict(type="AdamW", lr=1e-3, weight_decay=1e-4),
        ),
        "full": dict(iters=20000, crop=128, positive_min=0.1),
    },
}


def profile_for(task: str, quick: bool) -> Dict[str, Any]:
    return dict(PROFILES[task]["quick" if quick else "full"])


def run_profile(
    task: str,
    quick: bool,
    overrides: Optional[Dict[str, Any]] = None,
    iters: Optional[int] = None,
) -> Tuple[Dict[str, Any], int]:
    """The task's profile updated with ``overrides``, and the iteration budget (``iters``, else the
    profile's), taken out of the profile."""
    profile = profile_for(task, quick)
    profile.update(overrides or {})
    n_iters = int(iters or profile.pop("iters"))
    profile.pop("iters", None)
    return profile, n_iters


def parse_losses(task: str, losses: Optional[Sequence[str]]) -> List[LossSpec]:
    """Loss names -> specs, in the given order; KeyError naming the valid ones otherwise."""
    if task not in LOSSES:
        raise KeyError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    names = list(losses) if losses else list(DEFAULT_LOSSES[task])
    specs = []
    for name in names:
        if name not in LOSSES[task]:
            valid = ", ".join(LOSSES[task]) or "(none available)"
            raise KeyError(f"unknown {task} loss {name!r}; valid: {valid}")
        specs.append(LOSSES[task][name])
    return specs
