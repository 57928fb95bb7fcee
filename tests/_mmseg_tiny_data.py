"""Tiny generated data and CPU-sized config overrides for the MMSeg adapter tests.

Writes the layouts of ``sparse-ext data fetch`` (partial nuclei) and ``sparse-ext convert
lsr-blocks`` (LSR blocks) with a few 64x64 images of bright discs ("nuclei") on a dark
background, and gives the ``--cfg-options`` that shrink the configs' models and schedules.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import tifffile
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "mmseg"
SIZE = 64


def disc_image(rng: np.random.Generator, size: int = SIZE, n: int = 6):
    """(grayscale uint8 image, instance map int32) with ``n`` non-overlapping-ish discs."""
    yy, xx = np.mgrid[:size, :size]
    inst = np.zeros((size, size), np.int32)
    for k in range(1, n + 1):
        cy, cx = rng.integers(6, size - 6, 2)
        r = rng.integers(3, 6)
        inst[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (inst == 0)] = k
    img = (30 + 170 * (inst > 0) + rng.normal(0, 10, inst.shape)).clip(0, 255).astype(np.uint8)
    return img, inst


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_partial_nuclei(
    root: Path, n_train: int = 4, n_val: int = 2, fractions: Sequence[int] = (30, 100), seed=0
) -> Path:
    """The partial-nuclei layout under ``root``; returns ``root``."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_val)):
        for i in range(n):
            stem = f"{split}{i:02d}"
            img, inst = disc_image(rng)
            _png(root / "images" / split / f"{stem}.png", img)
            _png(root / "labels" / "full" / split / f"{stem}.png", (inst > 0).astype(np.uint8))
            (root / "instances" / split).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(root / "instances" / split / f"{stem}.tif", inst)
            if split == "train":
                ids = np.arange(1, inst.max() + 1)
                for frac in fractions:
                    keep = ids[: max(1, round(len(ids) * frac / 100))]
                    sparse = np.isin(inst, keep).astype(np.uint8)
                    _png(root / "labels" / f"frac{frac:03d}" / "train" / f"{stem}.png", sparse)
    return root


def write_lsr_blocks(
    root: Path,
    labels: Dict[str, int],
    num_labels: int = 3,
    block: int = 32,
    per_class: bool = False,
    highres: Sequence[str] = (),
    seed: int = 0,
) -> Path:
    """One ``lsr-blocks`` output under ``root``: blocks named by ``labels`` (name -> z), masks,
    block_labels.csv and table.json (classes background, nucleus); optional sparse high-res
    labels for the blocks in ``highres``."""
    rng = np.random.default_rng(seed)
    classes = ["background", "nucleus"]
    rows: List[list] = []
    for name, z in labels.items():
        img, inst = disc_image(rng, block, n=1 + z)
        _png(root / "blocks" / f"{name}.png", img)
        mask = (inst > 0).astype(np.uint8)
        _png(root / "masks" / f"{name}.png", mask)
        if name in highres:
            sparse = np.full_like(mask, 255)
            sparse[:2] = mask[:2]  # two labelled rows
            _png(root / "highres" / f"{name}.png", sparse)
        rows.append([f"{name}.png", z, z] if per_class else [f"{name}.png", z])
    header = ["block", "z_background", "z_nucleus"] if per_class else ["block", "z"]
    with open(root / "block_labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    fg = [0.05 + 0.1 * z for z in range(num_labels)]
    table = {
        "classes": classes,
        "labels": list(range(num_labels)),
        "eta": [[1 - v for v in fg], fg],
        "rho": [[0.05] * num_labels, [0.05] * num_labels],
    }
    (root / "table.json").write_text(json.dumps(table))
    return root


def tiny_unet_options(work_dir: str, iters: int = 2, crop: int = SIZE) -> dict:
    """--cfg-options shrinking a UNet (fcn_unet_s5-d16) config to a CPU smoke size."""
    return {
        "model.backbone.base_channels": 8,
        "model.decode_head.in_channels": 8,
        "model.decode_head.channels": 8,
        "model.auxiliary_head.in_channels": 16,
        "model.auxiliary_head.channels": 8,
        **tiny_runtime_options(work_dir, iters, crop),
    }


def tiny_resnet_options(work_dir: str, iters: int = 2, crop: int = SIZE) -> dict:
    """--cfg-options shrinking the FCN ResNet-18 config (narrow stem and heads)."""
    return {
        "model.backbone.stem_channels": 16,
        "model.backbone.base_channels": 8,
        "model.decode_head.in_channels": 64,
        "model.decode_head.channels": 8,
        "model.auxiliary_head.in_channels": 32,
        "model.auxiliary_head.channels": 8,
        **tiny_runtime_options(work_dir, iters, crop),
    }


def tiny_runtime_options(
    work_dir: str, iters: int, crop: int = SIZE, partial_nuclei: bool = True
) -> dict:
    """Flat --cfg-options (scalars and tuples only, so they also pass through argv)."""
    opts = {
        "work_dir": work_dir,
        "train_cfg.max_iters": iters,
        "train_cfg.val_interval": iters,
        "param_scheduler.0.end": iters,
        "default_hooks.logger.interval": 1,
        "default_hooks.checkpoint.interval": iters,
        "randomness.seed": 0,
        "model.data_preprocessor.size": (crop, crop),
        "model.test_cfg.crop_size": (crop, crop),
        "model.test_cfg.stride": (crop, crop),
    }
    if partial_nuclei:
        opts["train_dataloader.dataset.pipeline.2.scale"] = (crop, crop)
        opts["train_dataloader.dataset.pipeline.3.crop_size"] = (crop, crop)
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        opts[f"{key}.num_workers"] = 0
        opts[f"{key}.persistent_workers"] = False
    return opts


def tiny_lsr_options(work_dir: str, data_root: str, iters: int = 2) -> dict:
    """Runtime options for the LSR block configs on blocks from :func:`write_lsr_blocks`: width 8,
    batches of two groups of two same-label blocks, whole blocks (no resize or sliding window)."""
    opts = tiny_runtime_options(work_dir, iters=iters, partial_nuclei=False)
    for key in (
        "model.data_preprocessor.size",
        "model.test_cfg.crop_size",
        "model.test_cfg.stride",
    ):
        opts.pop(key)
    opts.update(
        {
            "data_root": data_root,
            "model.backbone.base_channels": 8,
            "model.decode_head.in_channels": 8,
            "model.decode_head.channels": 8,
            "train_dataloader.batch_size": 4,
            "train_dataloader.batch_sampler.group_size": 2,
        }
    )
    return opts


def cfg_options_argv(options: dict) -> List[str]:
    """A dict of options as ``--cfg-options`` argv words (values through repr)."""
    words = []
    for key, value in options.items():
        if isinstance(value, tuple):
            value = "(" + ",".join(map(str, value)) + ")"
        words.append(f"{key}={value}")
    return words


os.environ.setdefault("OMP_NUM_THREADS", "2")


def tiny_training_options(tmp_path: Path, iters: int) -> dict:
    """--cfg-options for a training-only Runner of a tiny UNet partial-nuclei config on freshly
    written data (two training frames at 30 %): no validation, no checkpoints."""
    root = write_partial_nuclei(tmp_path / "data", n_train=2, n_val=1)
    opts = tiny_unet_options(str(tmp_path / "wd"), iters=iters)
    opts.update(
        {
            "data_root": str(root),
            "train_dataloader.batch_size": 2,
            "default_hooks.checkpoint.interval": -1,
            "val_cfg": None,
            "val_dataloader": None,
            "val_evaluator": None,
            "train_cfg.val_interval": 100,
        }
    )
    return opts
