#!/usr/bin/env python
"""Per-label block statistics of a trained LSR model: does it match the table's means with the
right pixels, or by saturating whole blocks?

Label super-resolution (Zhao, Hou et al., arXiv 2019) matches each label's block statistics to
the (eta, rho) table; a model can meet a label's mean with some blocks all nucleus and others
all background instead of the nuclei. For every block label z this prints the table's eta, the
predicted and the true nucleus share of the training blocks (mean and spread over blocks), the
share of blocks saturated (below 0.05 or above 0.95) in the prediction and in the true masks,
and the pixel Dice on the blocks (their masks are evaluation-only)::

    python tools/lsr_block_check.py WORK_DIR/CONFIG.py WORK_DIR/iter_3000.pth [--every 5]

CONFIG is the LSR config as trained (the benchmark writes it into its work dir); its train
dataset's ``data_root`` holds ``train/{blocks,masks,block_labels.csv,table.json}``.
"""

from __future__ import annotations

import argparse
import csv
import os.path as osp
from collections import defaultdict

import numpy as np


def block_stats(config: str, checkpoint: str, every: int = 1, nucleus: int = 1) -> dict:
    """{"labels": {z: {"eta", "predicted" (shares), "true" (shares)}}, "dice": pixel Dice} over
    every ``every``-th training block of ``config``'s LSR dataset."""
    from mmengine.config import Config
    from mmseg.apis import inference_model, init_model

    import sparse_ext.mmseg  # noqa: F401  (registers the LSR dataset, transforms and loss)
    from sparse_ext.benchmark.seg import pooled_dice_iou
    from sparse_ext.data.io import read_image
    from sparse_ext.losses.label_super_resolution import load_lsr_table
    from sparse_ext.metrics import binary_confusion

    cfg = Config.fromfile(config)
    train = cfg.train_dataloader.dataset
    root = osp.join(train.data_root, osp.dirname(train.ann_file))
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    eta, _, classes = load_lsr_table(osp.join(root, "table.json"))
    with open(osp.join(root, "block_labels.csv"), newline="") as f:
        header, *rows = list(csv.reader(f))
    # one label per block ("block,z") or one per class ("block,z_<class>,...")
    column = f"z_{classes[nucleus]}" if "z" not in header else "z"
    if column not in header:
        raise KeyError(f"{root}/block_labels.csv has no column {column!r} (header {header})")
    rows = [(r[0], int(r[header.index(column)])) for r in rows[::every] if r]
    model = init_model(cfg, checkpoint, device="cpu")
    labels: dict = defaultdict(lambda: {"predicted": [], "true": []})
    counts = np.zeros(3, dtype=np.int64)
    for name, z in rows:
        name = name if name.endswith(".png") else name + ".png"
        pred = inference_model(model, osp.join(root, "blocks", name)).pred_sem_seg.data[0]
        pred = pred.numpy() == nucleus
        mask = read_image(osp.join(root, "masks", name)) == nucleus
        counts += binary_confusion(mask, pred)[:3]
        labels[z]["eta"] = float(eta[nucleus, z])
        labels[z]["predicted"].append(float(pred.mean()))
        labels[z]["true"].append(float(mask.mean()))
    return {"labels": dict(sorted(labels.items())), "dice": pooled_dice_iou(*counts)["dice"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("checkpoint")
    parser.add_argument("--every", type=int, default=1, help="use every n-th block")
    parser.add_argument("--nucleus", type=int, default=1, help="the class whose share is z")
    args = parser.parse_args(argv)
    if args.every < 1:
        parser.error(f"--every must be >= 1, got {args.every}")
    stats = block_stats(args.config, args.checkpoint, args.every, args.nucleus)
    print("z  blocks  eta    nucleus share: predicted / true (mean +- std over blocks)  saturated")
    for z, cell in stats["labels"].items():
        p, t = np.array(cell["predicted"]), np.array(cell["true"])
        saturated = [float(((x < 0.05) | (x > 0.95)).mean()) for x in (p, t)]
        print(
            f"{z:<2} {len(p):>6}  {cell['eta']:.3f}  {p.mean():.3f} +- {p.std():.3f} / "
            f"{t.mean():.3f} +- {t.std():.3f}{'':24}{saturated[0]:.2f} / {saturated[1]:.2f}"
        )
    print(f"pixel Dice on the blocks: {stats['dice']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
