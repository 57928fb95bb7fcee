"""A tiny generated nuclei dataset in the layout ``sparse-ext data fetch`` writes (tests, smoke runs).

Layout under ``root/<name>/``::

    images/{train,val,test}/<stem>.png        8-bit grey images (bright discs on a dark noisy field)
    labels/full/{train,val,test}/<stem>.png   exhaustive class maps (0 background, 1 nucleus)
    labels/frac{NNN}/train/<stem>.png         nested sparse variants: unannotated nuclei set to 0
    instances/{train,val,test}/<stem>.tif     instance ids (uint16, 0 background)

No COCO json is written (the seg benchmark does not read it).
"""

from __future__ import annotations

import os
from typing import Dict, Sequence

import numpy as np

__all__ = ["make_synthetic_nuclei"]


def _frame(rng: np.random.Generator, size: int, n_discs: int):
    yy, xx = np.mgrid[:size, :size]
    inst = np.zeros((size, size), np.uint16)
    radius_range = (max(3, size // 16), max(4, size // 9))
    for i in range(1, n_discs + 1):
        r = rng.uniform(*radius_range)
        cy, cx = rng.uniform(r, size - r, size=2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        inst[disc & (inst == 0)] = i
    img = rng.normal(40, 12, (size, size)) + 150 * (inst > 0)
    return np.clip(img, 0, 255).astype(np.uint8), inst


def make_synthetic_nuclei(
    root: str,
    *,
    name: str = "hela",
    size: int = 64,
    n_frames: Dict[str, int] = None,
    n_discs: int = 6,
    fractions: Sequence[int] = (10, 30, 50, 100),
    seed: int = 0,
) -> str:
    """Write the dataset and return its folder ``root/name``. Sparse variants are nested: the
    annotated nuclei of a smaller fraction are annotated in every larger one."""
    from skimage.io import imsave
    from tifffile import imwrite

    n_frames = n_frames or {"train": 4, "val": 1, "test": 2}
    rng = np.random.default_rng(seed)
    out = os.path.join(root, name)
    for split, n in n_frames.items():
        for sub in (f"images/{split}", f"labels/full/{split}", f"instances/{split}"):
            os.makedirs(os.path.join(out, sub), exist_ok=True)
        for k in range(n):
            stem = f"{split}_{k:03d}"
            img, inst = _frame(rng, size, n_discs)
            imsave(os.path.join(out, "images", split, stem + ".png"), img, check_contrast=False)
            full = (inst > 0).astype(np.uint8)
            imsave(
                os.path.join(out, "labels/full", split, stem + ".png"), full, check_contrast=False
            )
            imwrite(os.path.join(out, "instances", split, stem + ".tif"), inst)
            if split != "train":
                continue
            ids = np.unique(inst[inst > 0])
            order = rng.permutation(ids)
            for frac in fractions:
                keep = order[: int(round(len(ids) * frac / 100))]
                sparse = np.isin(inst, keep).astype(np.uint8)
                folder = os.path.join(out, f"labels/frac{frac:03d}", split)
                os.makedirs(folder, exist_ok=True)
                imsave(os.path.join(folder, stem + ".png"), sparse, check_contrast=False)
    return out
