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
dataset (``LSRBlockDataset``) is read as training read it, and the true shares come from the
``masks/`` folder that ``sparse-ext convert lsr-blocks`` writes beside ``blocks/``.
"""

from __future__ import annotations

import argparse
import os.path as osp
from collections import defaultdict

import numpy as np


def block_stats(config: str, checkpoint: str, every: int = 1, nucleus: int = 1) -> dict:
    """{"labels": {z: {"eta", "predicted" (shares), "true" (shares)}}, "dice": pixel Dice} over
    every ``every``-th block (in the order of the dataset: sorted names) of ``config``'s
    ``LSRBlockDataset``; z is the block's label for class ``nucleus``, the true share is read
    from the converter's ``masks/`` beside the ``blocks/`` folder."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.apis import inference_model, init_model
    from mmseg.registry import DATASETS

    import sparse_ext.mmseg  # noqa: F401  (registers the LSR dataset, transforms and loss)
    from sparse_ext.benchmark.seg import pooled_dice_iou
    from sparse_ext.data.io import read_image
    from sparse_ext.metrics import binary_confusion
    from sparse_ext.mmseg.datasets import LSRBlockDataset

    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    cfg = Config.fromfile(config)
    init_default_scope(cfg.get("default_scope", "mmseg"))
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    if not isinstance(dataset, LSRBlockDataset):
        raise TypeError(f"{config}: the train dataset is {type(dataset).__name__}, not LSR blocks")
    model = init_model(cfg, checkpoint, device="cpu")
    labels: dict = defaultdict(lambda: {"predicted": [], "true": []})
    counts = np.zeros(3, dtype=np.int64)
    for i in range(0, len(dataset), every):
        info = dataset.get_data_info(i)
        blocks, name = osp.split(info["img_path"])
        z = int(info["block_label"][nucleus])
        pred = inference_model(model, info["img_path"]).pred_sem_seg.data[0].numpy() == nucleus
        mask = read_image(osp.join(osp.dirname(blocks), "masks", name)) == nucleus
        counts += binary_confusion(mask, pred)[:3]
        labels[z]["eta"] = float(dataset.eta[nucleus, z])
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
