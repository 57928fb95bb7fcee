"""The share of true objects among the ROI head's unannotated candidates of trained detection
benchmark runs, against the two values of pi_u that bound ECE's exclusions.

For each run folder (``work_dirs/.../det/<dataset>/<loss>_f<NNN>_s<seed>``) the trained model
proposes boxes on the training images, augmented as in training (``DatasetMapper``, three passes,
seed 0), with the run's partial annotations as targets; the candidates are the proposals plus
the annotations, as Detectron2's ROI sampler sees them. Printed per run:

- ``true``: the share of the candidates on no annotation (IoU < the ROI head's threshold) that lie
  on a nucleus of the exhaustive file (IoU >= 0.5), the pi_u the bound should use;
- ``estimated``: ``sparse_ext.losses.estimated_unlabeled_prior`` of the same candidates
  (``MODEL.SPARSE.ECE.EXCLUSION_BUDGET -2``);
- ``fixed``: ``unlabeled_prior(f, PU.OBJECT_SHARE)`` (``EXCLUSION_BUDGET -1``)::

    .venv/bin/python tools/det_object_share.py --data data/hela \\
        work_dirs/bench_jitter/det/hela/ece_budget_f000_s0 ...
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import sys
from typing import Dict, Set

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from det_false_positives import inference_config  # noqa: E402


def _partial_file(run: str, data: str) -> str:
    """The run's training COCO file: its one-per-patch file, else the dataset's fraction file."""
    from sparse_ext.benchmark.context import parse_run_folder
    from sparse_ext.benchmark.det import find_coco

    own = sorted(glob.glob(os.path.join(run, "train_one_per_patch*.json")))
    if own:
        return own[0]
    try:
        _, fraction, _ = parse_run_folder(run)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    return find_coco(data, "train", fraction)


def measure(run: str, data: str, passes: int = 3) -> Dict[str, float]:
    """``true``, ``estimated`` and ``fixed`` pi_u of one run (see the module docstring)."""
    import numpy as np
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import DatasetMapper
    from detectron2.data.datasets import load_coco_json
    from detectron2.modeling import build_model
    from detectron2.modeling.proposal_generator.proposal_utils import (
        add_ground_truth_to_proposals,
    )
    from detectron2.structures import pairwise_iou
    from detectron2.utils.events import EventStorage

    from sparse_ext.losses import estimated_unlabeled_prior, unlabeled_prior

    cfg = inference_config(run)
    object_share = cfg.MODEL.SPARSE.PU.OBJECT_SHARE
    # only the proposals are used; the RPN computes its loss in training mode
    cfg.MODEL.SPARSE.ROI_LOSS = cfg.MODEL.SPARSE.RPN_LOSS = "ce"
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.train()  # training-mode proposals (POST_NMS_TOPK_TRAIN)

    with open(_partial_file(run, data)) as f:
        partial = json.load(f)
    annotated: Set[int] = {a["id"] for a in partial["annotations"]}
    fraction = float(partial["info"]["sparse_fraction"])
    dicts = load_coco_json(
        os.path.join(data, "annotations", "train.json"),
        os.path.join(data, "images", "train"),
        extra_annotation_keys=["id"],
    )
    for d in dicts:  # class 0: annotated in the run's file, 1: not
        for a in d["annotations"]:
            a["category_id"] = 0 if a["id"] in annotated else 1
    mapper = DatasetMapper(cfg, is_train=True)
    threshold = cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0]
    torch.manual_seed(0)
    np.random.seed(0)
    on_object = on_annotated = unlabeled = 0
    with EventStorage(0), torch.no_grad():
        for _ in range(passes):
            for d in dicts:
                x = mapper(copy.deepcopy(d))
                every = x["instances"]
                part = every[every.gt_classes == 0]
                part.gt_classes = torch.zeros(len(part), dtype=torch.long)
                images = model.preprocess_image([x])
                features = model.backbone(images.tensor)
                proposals, _ = model.proposal_generator(images, features, [part])
                boxes = add_ground_truth_to_proposals([part], proposals)[0].proposal_boxes
                best = torch.zeros(len(boxes))
                if len(part):
                    best = pairwise_iou(part.gt_boxes, boxes).max(dim=0).values
                off = best < threshold
                truth = torch.zeros(len(boxes), dtype=torch.bool)
                if len(every):
                    truth = pairwise_iou(every.gt_boxes, boxes).max(dim=0).values >= 0.5
                on_object += int((off & truth).sum())
                on_annotated += int((~off).sum()) - len(part)
                unlabeled += int(off.sum())
    return {
        "fraction": fraction,
        "true": on_object / max(unlabeled, 1),
        "estimated": estimated_unlabeled_prior(max(on_annotated, 0), unlabeled, fraction),
        "fixed": unlabeled_prior(fraction, object_share),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="benchmark run folders (with model_final.pth)")
    parser.add_argument("--data", required=True, help="the dataset root (annotations/, images/)")
    parser.add_argument("--passes", type=int, default=3, help="augmented passes over the images")
    a = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    print("| run | f | true pi_u | estimated (-2) | fixed (-1) |")
    print("|---|---|---|---|---|")
    for run in a.runs:
        r = measure(run, a.data, a.passes)
        name = os.path.basename(os.path.normpath(run))
        print(
            f"| {name} | {r['fraction']:.3f} | {r['true']:.3f} | {r['estimated']:.3f} "
            f"| {r['fixed']:.3f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
