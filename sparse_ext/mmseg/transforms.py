"""Block labels as label maps (TRANSFORMS ``LoadBlockLabel``), so that stock decode heads carry
them to ``LabelSuperResolutionLoss``.

Label super-resolution (Zhao, Hou et al.) trains from one low-resolution label z per image block (per
high-res class l in the per-class form) instead of a pixel mask. MMSeg's decode heads pass only
``gt_sem_seg`` to their losses, so ``LoadBlockLabel`` writes each block's labels into a constant
``gt_seg_map`` that MMSeg's geometric transforms (flip, crop, resize, pad) carry unchanged, and the
loss reads one label tuple back per block. Each pixel holds::

    value = 256 * (code + 1) + pixel_label
    code  = sum_l z_l * Z**l                 (the block's labels, base Z = number of labels)
    pixel_label = high-res class of the pixel, 255 where it has none ("& high res" variants)

so every value below 256 means "no block": MMSeg's padding (``seg_pad_val=255``) and ignored
pixels fall out of the block statistics on their own, and stock label maps (< 256) are never
mistaken for block labels. Maps are int32 (OpenCV's nearest resize, flip and pad support it).
"""

from __future__ import annotations

from typing import Optional, Sequence

import mmcv
import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine import fileio
from mmseg.registry import TRANSFORMS

__all__ = [
    "NO_PIXEL_LABEL",
    "LoadBlockLabel",
    "codes_to_labels",
    "decode_block_label_map",
    "encode_block_label",
    "max_block_code",
]

NO_PIXEL_LABEL = 255  # low byte of a block pixel without a high-res label
_INT32_MAX = 2**31 - 1


def max_block_code(num_classes: int, num_labels: int) -> int:
    """The largest code of ``num_classes`` labels in 0..num_labels-1; ValueError if the encoded
    map would overflow int32."""
    top = num_labels**num_classes - 1
    if 256 * (top + 1) + 255 > _INT32_MAX:
        raise ValueError(
            f"{num_classes} classes x {num_labels} block labels do not fit an int32 label map "
            f"(Z**L = {num_labels**num_classes}); use fewer labels or the shared-label form"
        )
    return top


def encode_block_label(z: Sequence[int], num_labels: int) -> int:
    """Per-class block labels ``z`` (one per class, each in 0..num_labels-1) -> the map's block
    part ``256 * (code + 1)`` (add the pixel label, 255 for none)."""
    z = [int(v) for v in z]
    if any(v < 0 or v >= num_labels for v in z):
        raise ValueError(f"block labels {z} outside 0..{num_labels - 1}")
    max_block_code(len(z), num_labels)
    code = sum(v * num_labels**i for i, v in enumerate(z))
    return 256 * (code + 1)


def decode_block_label_map(label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encoded maps (N, H, W) -> (block_valid (N, H, W) bool, codes (N, H, W) long with -1 where
    no block, pixel_labels (N, H, W) long with 255 where none)."""
    label = label.long()
    valid = label >= 256
    codes = torch.where(valid, label // 256 - 1, torch.full_like(label, -1))
    pixel = torch.where(valid, label % 256, torch.full_like(label, NO_PIXEL_LABEL))
    return valid, codes, pixel


def codes_to_labels(codes: torch.Tensor, num_classes: int, num_labels: int) -> torch.Tensor:
    """Codes (N,) -> per-class labels (N, L): ``z_l = (code // Z**l) % Z``."""
    powers = num_labels ** torch.arange(num_classes, device=codes.device)
    return (codes[:, None] // powers) % num_labels


@TRANSFORMS.register_module()
class LoadBlockLabel(BaseTransform):
    """Write the block's labels as a constant ``gt_seg_map`` (see the module docstring).

    Required keys: ``img`` (or ``img_shape``), ``block_label`` (per-class labels, a sequence of L
    ints; ``LSRBlockDataset`` sets it), ``num_block_labels`` (Z). Optional: ``highres_path``, a
    sparse high-res class map of the block (255 = unlabelled pixel) for the "& high res" variants.

    Added keys: ``gt_seg_map`` (int32), ``seg_fields``.

    Args:
        imdecode_backend: backend reading the high-res map (as MMSeg's LoadAnnotations).
        backend_args: file backend arguments.
    """

    def __init__(self, imdecode_backend: str = "pillow", backend_args: Optional[dict] = None):
        self.imdecode_backend = imdecode_backend
        self.backend_args = backend_args.copy() if backend_args else None

    def transform(self, results: dict) -> dict:
        for key in ("block_label", "num_block_labels"):
            if key not in results:
                raise KeyError(
                    f"LoadBlockLabel needs '{key}' in the results (use LSRBlockDataset); "
                    f"keys: {sorted(results)}"
                )
        shape = results["img"].shape[:2] if "img" in results else tuple(results["img_shape"][:2])
        block = encode_block_label(results["block_label"], int(results["num_block_labels"]))
        seg = np.full(shape, block + NO_PIXEL_LABEL, dtype=np.int32)
        highres = results.get("highres_path")
        if highres:
            pixel = mmcv.imfrombytes(
                fileio.get(highres, backend_args=self.backend_args),
                flag="unchanged",
                backend=self.imdecode_backend,
            ).squeeze()
            if pixel.ndim != 2 or pixel.min() < 0 or pixel.max() > NO_PIXEL_LABEL:
                raise ValueError(
                    f"high-res label map {highres} must be one channel with values 0..254 "
                    f"(classes) or 255 (unlabelled)"
                )
            if pixel.shape != shape:
                raise ValueError(
                    f"high-res label map {highres} has shape {pixel.shape}, its block {shape}"
                )
            seg = (block + pixel.astype(np.int32)).astype(np.int32)
        results["gt_seg_map"] = seg
        results.setdefault("seg_fields", [])
        if "gt_seg_map" not in results["seg_fields"]:
            results["seg_fields"].append("gt_seg_map")
        return results

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(imdecode_backend={self.imdecode_backend!r})"
