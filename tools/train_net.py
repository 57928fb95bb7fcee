#!/usr/bin/env python
"""Train and evaluate Detectron2's Faster R-CNN with sparse_ext's partial-annotation losses.

Detectron2's tools/train_net.py pattern (DefaultTrainer, --eval-only, --num-gpus via launch) plus:
``add_sparse_config``, COCO datasets registered from the command line with ``--register-coco``,
evaluation by Detectron2's COCOEvaluator (AP) together with SparseDetectionEvaluator (F1,
precision, recall, average recall/precision, exclusive recall), and whole-model gradient-norm
clipping (``SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model"``, :mod:`sparse_ext.detectron2.solver`).

``--config-file`` takes our configs (configs/detectron2/*.yaml, whose R50 recipes take Detectron2's
from the installed package through ``_BASE_: "model_zoo://..."``), any Detectron2 YAML config, such
as the model-zoo files the installed package ships
(``detectron2.model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")``), or
``model_zoo://COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml`` directly; no source clone of
Detectron2 is needed. With a stock Detectron2 config, switch to the sparse heads with the opts
``MODEL.ROI_HEADS.NAME SparseROIHeads MODEL.PROPOSAL_GENERATOR.NAME SparseRPN``.

Example (CPU, tiny config)::

    python tools/train_net.py --config-file configs/detectron2/faster_rcnn_R_18_FPN_tiny_cpu.yaml \\
        --register-coco cells_train data/train_30.json data/images \\
        --register-coco cells_test data/test.json data/images \\
        DATASETS.TRAIN "('cells_train',)" DATASETS.TEST "('cells_test',)" \\
        MODEL.SPARSE.ROI_LOSS nnpu OUTPUT_DIR work_dirs/d2_nnpu
"""

from __future__ import annotations

import logging
import sys

import detectron2.utils.comm as comm
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results

from sparse_ext.detectron2 import (
    build_optimizer,
    build_sparse_evaluators,
    load_sparse_config,
    register_partial_coco,
)


class Trainer(DefaultTrainer):
    """DefaultTrainer evaluating with COCOEvaluator + SparseDetectionEvaluator, and with
    ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model"`` (whole-model gradient-norm clipping, as the
    official code of Zhao, Pang et al. and Mask2Former's trainer; our recipes enable it). The
    sparse losses read training progress from the trainer's EventStorage: no extra hook is
    needed."""

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_sparse_evaluators(cfg, dataset_name, output_folder)


def setup(args):
    """The frozen config: ``--config-file`` through :func:`load_sparse_config` (``model_zoo://``
    paths resolved), then the command-line opts."""
    for name, json_file, image_root in args.register_coco or []:
        register_partial_coco(name, json_file, image_root)
    cfg = load_sparse_config(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def build_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--register-coco",
        nargs=3,
        action="append",
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a (partially annotated) COCO file as dataset NAME; repeatable",
    )
    return parser


def cli(argv=None):
    args = build_parser().parse_args(argv)
    logging.getLogger("sparse_ext").info("Command line arguments: %s", args)
    return launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    cli(sys.argv[1:])
