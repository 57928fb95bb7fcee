"""Label super-resolution runs: block labels from the nucleus masks, MMSeg UNet, full test frames.

Zhao, Hou et al. ("Label super resolution with inter-instance loss", arXiv 2019) train from one
low-resolution label per image block plus the table of (eta, rho) = mean and standard deviation
of each class's pixel fraction per label. Here the blocks and labels come from
``make_lsr_blocks`` on the training frames of a ``sparse-ext data fetch`` dataset with the
exhaustive nucleus masks: z = the block's nucleus fraction quantised into ``bins`` bins, the table
by mask estimation (their Appendix B.2); the masks are used for nothing else, except by the
``ce_full`` ceiling (cross-entropy on the blocks' masks). Each run trains
``configs/mmseg/unet_s5-d16_lsr-*_lsr-blocks.py`` (GroupNorm UNet; the loss is the only
difference) and predicts the full held-out test frames. Scores: foreground Dice/IoU (pixels pooled over the frames) and
masked Dice/IoU, the same restricted to pixels within ``band_width`` of the reference nucleus
boundaries (their Sec. 3.2.2: where super-resolution has to place the boundary).

Two specs train nothing (no config; the spec's name picks them):

- ``lowres`` is the paper's "low resolution model" with a perfect block classifier: every test
  block gets its true label z (from the reference mask) and all its pixels the class the table
  says is in the majority for z (nucleus iff eta[nucleus][z] >= 0.5): what block labels alone
  can give.
- ``threshold`` is the label-calibrated intensity threshold (issue 13): ONE global grey-level
  threshold, and its polarity (nucleus brighter or darker), chosen from the training blocks, their
  labels z and the table alone (:func:`threshold_from_block_labels`: the grey level that leaves
  the table's expected nucleus share, mean_k eta[nucleus][z_k], of the training pixels on the
  nucleus side), then applied to the full test frames. A trained LSR model has to beat it to show that it learned
  more than the stain's brightness.

The "& high res" specs (``inter_highres``, ``intra_inter_highres``; their Sec. 3.1.4 and Table 3,
the only setting in which the paper reports the inter-instance loss) add cross-entropy on the
full masks of a few training blocks (:func:`prepare_highres`: a fixed random
``highres_fraction`` of them, the same blocks for every seed); ``highres`` is their "high res"
row, cross-entropy on those blocks alone.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil
import time
from typing import Any, Dict, Mapping, Tuple

import numpy as np

from sparse_ext.benchmark.context import RunContext
from sparse_ext.benchmark.mmengine_runs import apply_profile, configure_run, load_config
from sparse_ext.benchmark.seg import pooled_dice_iou, train_and_evaluate
from sparse_ext.data import read_block_labels
from sparse_ext.data.io import write_csv

__all__ = [
    "build_config",
    "lowres_predictions",
    "prepare_highres",
    "prepare_lsr_blocks",
    "run",
    "score_lsr",
    "threshold_from_block_labels",
    "threshold_predictions",
]

NUCLEUS = 1


def prepare_lsr_blocks(data_root: str, cache: str, block: int, bins: int) -> str:
    """Blocks, labels and table of the training frames under ``cache`` (built once); returns the
    LSR data root (``<cache>/train/{blocks,masks,block_labels.csv,table.json}``)."""
    from sparse_ext.data.lsr_blocks import make_lsr_blocks

    root = os.path.abspath(os.path.join(cache, f"lsr_b{block}_z{bins}"))
    if os.path.isfile(os.path.join(root, "train", "table.json")):
        return root
    tmp = root + ".partial"
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)
    make_lsr_blocks(
        os.path.join(data_root, "images", "train"),
        os.path.join(data_root, "labels", "full", "train"),
        os.path.join(tmp, "train"),
        block=block,
        bins=bins,
        verbose=False,
    )
    os.replace(tmp, root)
    return root


def prepare_highres(lsr_root: str, fraction: float, seed: int = 0) -> Tuple[str, str]:
    """The limited high-resolution labels of the "& high res" runs: the masks of a random
    ``fraction`` of the training blocks (at least one; drawn once with ``seed``, so every run
    seed sees the same blocks), copied to ``train/highres_<p>pct/`` with their rows of
    ``block_labels.csv`` in ``train/block_labels_highres_<p>pct.csv``; both written once and
    atomically. Returns the two paths relative to ``lsr_root``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"highres_fraction must be in (0, 1], got {fraction}")
    tag = f"highres_{100 * fraction:g}pct"
    train = os.path.join(lsr_root, "train")
    folder, labels = f"train/{tag}", f"train/block_labels_{tag}.csv"
    if os.path.isdir(os.path.join(lsr_root, folder)) and os.path.isfile(
        os.path.join(lsr_root, labels)
    ):
        return folder, labels
    with open(os.path.join(train, "block_labels.csv"), newline="") as f:
        header, *rows = [r for r in csv.reader(f) if r]
    rows.sort(key=lambda r: r[0])
    count = max(1, round(fraction * len(rows)))
    chosen = sorted(np.random.default_rng(seed).choice(len(rows), count, replace=False))
    tmp = os.path.join(lsr_root, folder) + ".partial"
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    for i in chosen:
        name = rows[i][0].strip()
        name = name if name.endswith(".png") else name + ".png"
        shutil.copyfile(os.path.join(train, "masks", name), os.path.join(tmp, name))
    os.replace(tmp, os.path.join(lsr_root, folder))
    write_csv(os.path.join(lsr_root, labels), header, [rows[i] for i in chosen])
    return folder, labels


def _test_dataset(data_root: str) -> Dict[str, Any]:
    """The exhaustively labelled test frames (PartialNucleiDataset), as in the seg benchmark."""
    return dict(
        type="PartialNucleiDataset",
        data_root=data_root,
        data_prefix=dict(
            img_path="images/test", seg_map_path="labels/full/test", inst_path="instances/test"
        ),
        img_suffix=".png",
        seg_map_suffix=".png",
        pipeline=[
            dict(type="LoadImageFromFile"),
            dict(type="LoadAnnotations"),
            dict(type="PackSegInputs"),
        ],
    )


def build_config(ctx: RunContext, lsr_root: str):
    """The run's Config: an LSR config pointed at the blocks of ``lsr_root`` (and its table),
    tested on the full test frames of the run's dataset."""
    cfg = load_config(ctx)
    table = os.path.join(lsr_root, "train", "table.json")
    train = cfg.train_dataloader.dataset
    train.data_root = lsr_root
    train.table_file = table
    for head in (cfg.model.decode_head, cfg.model.get("auxiliary_head")):
        if head and head.get("loss_decode", {}).get("type") == "LabelSuperResolutionLoss":
            head.loss_decode.table = table
    if "highres_path" in train.data_prefix or ctx.spec.highres_only:
        folder, labels = prepare_highres(lsr_root, float(ctx.profile["highres_fraction"]))
        if ctx.spec.highres_only:
            train.ann_file = labels
        else:
            train.data_prefix.highres_path = folder
    cfg.test_dataloader.dataset = _test_dataset(ctx.data_root)
    configure_run(cfg, ctx)
    apply_profile(cfg, ctx.profile)  # block, bins and band_width are not the model's
    return cfg


def score_lsr(
    predictions: Mapping[str, np.ndarray], data_root: str, band_width: float
) -> Dict[str, float]:
    """Foreground Dice/IoU and masked Dice/IoU (within ``band_width`` px of the reference
    boundaries), pixels pooled over the test frames."""
    from sparse_ext.data.io import read_image
    from sparse_ext.metrics import binary_confusion, boundary_band

    full = np.zeros(3, dtype=np.int64)
    band = np.zeros(3, dtype=np.int64)
    for stem, pred in predictions.items():
        gt = read_image(os.path.join(data_root, "labels", "full", "test", stem + ".png"))
        full += binary_confusion(gt, pred)[:3]
        band += binary_confusion(gt, pred, valid=boundary_band(gt, band_width))[:3]

    scores = pooled_dice_iou(*full)
    masked = pooled_dice_iou(*band)
    return dict(**scores, masked_dice=masked["dice"], masked_iou=masked["iou"])


def lowres_predictions(data_root: str, table_file: str, block: int) -> Dict[str, np.ndarray]:
    """The block-level prediction with true block labels (see the module docstring)."""
    from sparse_ext.data.io import read_image
    from sparse_ext.data.lsr_blocks import quantise_fraction
    from sparse_ext.losses.label_super_resolution import load_lsr_table

    eta, _, _ = load_lsr_table(table_file)
    majority = np.asarray(eta)[NUCLEUS] >= 0.5  # (bins,)
    bins = majority.shape[0]
    out: Dict[str, np.ndarray] = {}
    for path in sorted(glob.glob(os.path.join(data_root, "labels", "full", "test", "*.png"))):
        gt = read_image(path) == NUCLEUS
        pred = np.zeros(gt.shape, dtype=np.int64)
        for y in range(0, gt.shape[0], block):
            for x in range(0, gt.shape[1], block):
                cell = gt[y : y + block, x : x + block]  # edge blocks may be smaller
                z = int(quantise_fraction(np.array(cell.sum()), cell.size, bins))
                pred[y : y + block, x : x + block] = int(majority[z])
        out[os.path.splitext(os.path.basename(path))[0]] = pred
    if not out:
        raise FileNotFoundError(f"no test labels under {data_root}/labels/full/test")
    return out


def _grey(image: np.ndarray) -> np.ndarray:
    return np.asarray(image if image.ndim == 2 else image[..., :3].mean(-1), np.float64)


def threshold_from_block_labels(lsr_root: str, nucleus: int = NUCLEUS) -> Tuple[float, bool]:
    """One global intensity threshold and its polarity from the LSR training blocks, their block
    labels and the (eta, rho) table only (no pixel label is read).

    The table's means give the expected nucleus share of the training pixels,
    s = sum_k |X_k| eta[nucleus, z_k] / sum_k |X_k|; the threshold leaves that share of the
    pooled block pixels on the nucleus side: above t for bright nuclei, below t for dark ones.
    The polarity is the one whose per-block nucleus fractions match eta[nucleus, z_k] better
    (least squares over the blocks). Returns (t, bright): nucleus = grey > t if bright, else
    grey < t.
    """
    from sparse_ext.data.io import read_image

    train = os.path.join(lsr_root, "train")
    with open(os.path.join(train, "table.json")) as f:
        table = json.load(f)
    eta = np.asarray(table["eta"], np.float64)
    classes = [str(c) for c in table.get("classes", range(len(eta)))]
    labels = read_block_labels(os.path.join(train, "block_labels.csv"), classes, eta.shape[1])
    blocks, targets = [], []
    for name, z in labels.items():
        path = os.path.join(train, "blocks", name + ".png")
        blocks.append(np.sort(_grey(read_image(path)).ravel()))
        targets.append(eta[nucleus, z[nucleus]])
    sizes = np.array([b.size for b in blocks], np.float64)
    pooled = np.sort(np.concatenate(blocks))
    n = pooled.size
    m = int(np.clip(round(float(np.dot(sizes, targets))), 1, n - 1))  # expected nucleus pixels
    options = ((float(pooled[n - m - 1]), True), (float(pooled[m]), False))

    def cost(t: float, bright: bool) -> float:
        share = [
            1.0 - np.searchsorted(b, t, side="right") / b.size
            if bright
            else np.searchsorted(b, t, side="left") / b.size
            for b in blocks
        ]
        return float(np.mean((np.asarray(share) - np.asarray(targets)) ** 2))

    return min(options, key=lambda option: cost(*option))


def threshold_predictions(data_root: str, t: float, bright: bool) -> Dict[str, np.ndarray]:
    """The threshold applied to the full test frames (grey levels; RGB averaged)."""
    from sparse_ext.data.io import read_image

    out: Dict[str, np.ndarray] = {}
    for path in sorted(glob.glob(os.path.join(data_root, "images", "test", "*.png"))):
        grey = _grey(read_image(path))
        out[os.path.splitext(os.path.basename(path))[0]] = (
            (grey > t) if bright else (grey < t)
        ).astype(np.int64)
    if not out:
        raise FileNotFoundError(f"no test frames under {data_root}/images/test")
    return out


def run(ctx: RunContext) -> Dict[str, Any]:
    """One LSR run, or the untrained ``lowres`` / ``threshold`` baseline when the spec has no
    config; the CSV row's results."""
    block, bins = int(ctx.profile["block"]), int(ctx.profile["bins"])
    band_width = float(ctx.profile["band_width"])
    lsr_root = prepare_lsr_blocks(ctx.data_root, ctx.derived_data_dir, block, bins)
    if not ctx.spec.config:
        start = time.perf_counter()
        if ctx.spec.name == "threshold":
            t, bright = threshold_from_block_labels(lsr_root)
            preds = threshold_predictions(ctx.data_root, t, bright)
        else:
            table = os.path.join(lsr_root, "train", "table.json")
            preds = lowres_predictions(ctx.data_root, table, block)
        metrics = score_lsr(preds, ctx.data_root, band_width)
        return dict(seconds=time.perf_counter() - start, sec_per_iter=float("nan"), **metrics)
    result = train_and_evaluate(build_config(ctx, lsr_root), ctx.data_root, verbose=ctx.verbose)
    metrics = score_lsr(result.predictions, ctx.data_root, band_width)
    return dict(seconds=result.seconds, sec_per_iter=result.sec_per_iter, **metrics)
