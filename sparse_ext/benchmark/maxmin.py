"""Max-min runs: image-level labels built from the nucleus masks, MaxMinSegmentor, test crops.

Belharbi et al. ("Deep interpretable classification and weakly-supervised segmentation of
histology images via max-min uncertainty", IEEE TMI 2022, arXiv:2011.07221) train a localizer and
a classifier from image-level classes only.
The image-level data here: every frame of a ``sparse-ext data fetch`` dataset is cut into
non-overlapping ``crop`` x ``crop`` tiles; a tile is ``positive`` when at least ``positive_min``
of its pixels are nucleus in the exhaustive reference, ``negative`` when none is, and left out
when in between (too little nucleus to call it either way). Training reads the classes only; the
tiles' nucleus masks are read for evaluation only. Each run trains
``configs/mmseg/maxmin_unet_r18_eem.py`` with a regulariser (EEM, SEM or none) and is scored on
the test tiles by MMSeg's test loop: F1+ / F1- (Dice of the foreground / background, mean over
tiles, Eq. 14/15), the image classification error (%, Eq. 13) and the pooled foreground Dice.
"""

from __future__ import annotations

import copy
import csv
import glob
import os
import shutil
from typing import Any, Dict, Sequence

import numpy as np

from sparse_ext.benchmark.context import RunContext
from sparse_ext.benchmark.mmengine_runs import apply_profile, configure_run, load_config, train_then

__all__ = ["build_config", "prepare_maxmin_tiles", "run"]

CLASSES = ("negative", "positive")


def prepare_maxmin_tiles(
    data_root: str,
    cache: str,
    crop: int,
    positive_min: float,
    splits: Sequence[str] = ("train", "test"),
) -> str:
    """Tiles, masks and ``{split}.csv`` (image,label,mask) under ``cache`` (built once)."""
    from sparse_ext.data.io import read_image, write_image

    root = os.path.abspath(os.path.join(cache, f"maxmin_c{crop}_p{positive_min:g}"))
    if all(os.path.isfile(os.path.join(root, f"{s}.csv")) for s in splits):
        return root
    tmp = root + ".partial"
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)
    for split in splits:
        rows = []
        images = sorted(glob.glob(os.path.join(data_root, "images", split, "*.png")))
        if not images:
            raise FileNotFoundError(f"no {split} frames under {data_root}/images/{split}")
        for path in images:
            stem = os.path.splitext(os.path.basename(path))[0]
            img = read_image(path)
            mask = read_image(os.path.join(data_root, "labels", "full", split, stem + ".png")) > 0
            for y in range(0, img.shape[0] - crop + 1, crop):
                for x in range(0, img.shape[1] - crop + 1, crop):
                    fraction = mask[y : y + crop, x : x + crop].mean()
                    if 0 < fraction < positive_min:
                        continue
                    name = f"{split}_{stem}_y{y}_x{x}.png"
                    write_image(os.path.join(tmp, "images", name), img[y : y + crop, x : x + crop])
                    tile = mask[y : y + crop, x : x + crop].astype(np.uint8)
                    write_image(os.path.join(tmp, "masks", name), tile)
                    rows.append((name, CLASSES[int(fraction > 0)], name))
        with open(os.path.join(tmp, f"{split}.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "label", "mask"])
            writer.writerows(rows)
    os.replace(tmp, root)
    return root


def build_config(ctx: RunContext, tiles_root: str):
    """The run's Config: the max-min config on the tiles, an iteration budget (the log-barrier
    t follows training progress x the config's epochs), the LR step at half the budget as the
    config's step at half its epochs, then the test tiles scored by the config's evaluators."""
    cfg = load_config(ctx)
    for key in ("train_dataloader", "test_dataloader"):
        cfg[key].dataset.data_root = tiles_root
    evaluator = copy.deepcopy(cfg.test_evaluator)
    configure_run(cfg, ctx)
    cfg.test_evaluator = evaluator
    cfg.param_scheduler = [
        dict(type="MultiStepLR", by_epoch=False, milestones=[max(1, ctx.iters // 2)], gamma=0.1)
    ]
    cfg.log_processor = dict(by_epoch=False)
    width = ctx.profile.get("unet_base_channels")
    if width:
        cfg.model.classifier.backbone.update(stem_channels=width, base_channels=width)
    # crop is the tile size here (the tiles are the images), not a random crop
    apply_profile(cfg, {k: v for k, v in ctx.profile.items() if k != "crop"})
    return cfg


def run(ctx: RunContext) -> Dict[str, Any]:
    """Train one max-min run with ``Runner.train()``, score it with ``Runner.test()``."""
    crop, positive_min = int(ctx.profile["crop"]), float(ctx.profile["positive_min"])
    tiles = prepare_maxmin_tiles(ctx.data_root, ctx.derived_data_dir, crop, positive_min)
    cfg = build_config(ctx, tiles)
    metrics, seconds, per_iter = train_then(cfg, lambda runner: runner.test(), verbose=ctx.verbose)
    return dict(
        seconds=seconds,
        sec_per_iter=per_iter,
        f1_plus=float(metrics["maxmin/F1+"]),
        f1_minus=float(metrics["maxmin/F1-"]),
        cls_error=float(metrics["maxmin/ClsError"]),
        dice=float(metrics["sparse/Dice"]),
    )
