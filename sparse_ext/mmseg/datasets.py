"""Datasets (DATASETS) for partially annotated nuclei and for label super-resolution blocks.

``PartialNucleiDataset``: the layout ``sparse-ext data fetch`` writes::

    DATA/images/{train,val,test}/<stem>.png        uint8 grayscale (loaded as 3 channels)
    DATA/labels/full/{split}/<stem>.png            exhaustive: 0 background, 1 nucleus
    DATA/labels/frac{NNN}/train/<stem>.png         sparse: 1 annotated nucleus, 0 = background OR
                                                   an unannotated nucleus
    DATA/instances/{split}/<stem>.tif              instance maps (object metrics)

The annotated fraction (the share of the nuclei that carry a label) is recorded in
``metainfo["sparse_fraction"]``: the ``annotated_fraction`` argument, else what the converters
recorded for a ``labels/frac<NNN>/...`` folder (``info.sparse_fraction`` of
``annotations/train_frac<NNN>.json`` when present, else NNN / 100), else None.
``SparseLossAnnealingHook`` hands it to the losses that derive their settings from it.

Label values: 0 = background or unannotated (what ECE/nnPU treat as tentative background),
1..C-1 = annotated classes, ``ignore_index`` (255) = left out of every loss and metric. A config
picks the annotation fraction with ``seg_map_path='labels/frac030/train'``.

``LSRBlockDataset``: the layout ``sparse-ext convert lsr-blocks`` writes::

    OUT/blocks/<stem>_r<row>_c<col>.png            image blocks
    OUT/masks/<same>.png                           high-res class masks (evaluation only)
    OUT/block_labels.csv                           "block,z" or "block,z_<class>,..." per class
    OUT/table.json                                 {"classes", "labels", "eta", "rho"}

Each sample carries ``block_label`` (its labels, one per table class: a shared z is repeated) and
``num_block_labels`` (Z) for ``LoadBlockLabel``, which turns them into the label map that
``LabelSuperResolutionLoss`` reads.
"""

from __future__ import annotations

import json
import os.path as osp
import re
from typing import Dict, List, Optional, Sequence, Tuple

import mmcv
import numpy as np
from mmengine import fileio
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS
from PIL import Image

from sparse_ext.data import read_block_labels
from sparse_ext.losses._validate import check_range

__all__ = ["LSRBlockDataset", "PartialNucleiDataset", "recorded_fraction"]


def _read_label(path: str, backend_args: Optional[dict] = None) -> np.ndarray:
    """A label map as MMSeg's LoadAnnotations reads it (pillow, unchanged)."""
    return mmcv.imfrombytes(
        fileio.get(path, backend_args=backend_args), flag="unchanged", backend="pillow"
    ).squeeze()


def _image_size(path: str, backend_args: Optional[dict] = None) -> Tuple[int, int]:
    """(height, width) from the file header when pillow can read it, else from the pixels."""
    try:
        with Image.open(path) as im:
            w, h = im.size
        return h, w
    except (OSError, ValueError):
        img = mmcv.imfrombytes(fileio.get(path, backend_args=backend_args), flag="unchanged")
        return tuple(img.shape[:2])


def _missing(paths: Sequence[str], what: str, where: Optional[str]) -> None:
    if paths:
        raise FileNotFoundError(
            f"{len(paths)} {what} missing in {where}: {', '.join(paths[:5])}"
            + (" ..." if len(paths) > 5 else "")
        )


def recorded_fraction(seg_map_dir: Optional[str], data_root: Optional[str]) -> Optional[float]:
    """The annotated fraction recorded for a sparse label folder ``.../frac<NNN>/...``.

    ``info.sparse_fraction`` of ``<data_root>/annotations/train_frac<NNN>.json`` (written by
    ``sparse-ext convert subsample`` / ``sparse-ext data fetch``) when that file exists, else
    NNN / 100; None for a folder without ``frac<NNN>`` in its path.
    """
    match = re.search(r"(?:^|/)frac(\d{3})(?:/|$)", (seg_map_dir or "").replace(osp.sep, "/"))
    if match is None:
        return None
    coco = osp.join(data_root or "", "annotations", f"train_frac{match.group(1)}.json")
    if osp.isfile(coco):
        with open(coco) as f:
            info = json.load(f).get("info") or {}
        if info.get("sparse_fraction") is not None:
            return float(info["sparse_fraction"])
    return int(match.group(1)) / 100.0


@DATASETS.register_module()
class PartialNucleiDataset(BaseSegDataset):
    """Images with sparse (partial) label maps; see the module docstring for layout and values.

    Args:
        img_suffix: image suffix (default ``.png``).
        seg_map_suffix: label map suffix (default ``.png``).
        inst_suffix: instance map suffix when ``data_prefix`` has ``inst_path``; each sample then
            has ``inst_path`` (add it to ``PackSegInputs``' ``meta_keys`` for ``SparseSegMetric``).
        check_labels: read every label map once at start-up and raise on a size mismatch with
            its image or a value outside the classes and ``ignore_index``.
        annotated_fraction: the share of the nuclei that carry a label, in (0, 1]; None reads
            what the converters recorded (module docstring). Kept in
            ``metainfo["sparse_fraction"]``.
        **kwargs: the other ``BaseSegDataset`` arguments (data_root, data_prefix, pipeline...).
    """

    METAINFO = dict(classes=("background", "nucleus"), palette=[[0, 0, 0], [255, 0, 0]])

    def __init__(
        self,
        img_suffix: str = ".png",
        seg_map_suffix: str = ".png",
        inst_suffix: str = ".tif",
        check_labels: bool = True,
        annotated_fraction: Optional[float] = None,
        **kwargs,
    ) -> None:
        if annotated_fraction is not None:
            check_range("annotated_fraction", annotated_fraction, 0.0, 1.0, low_open=True)
        self.inst_suffix = inst_suffix
        self.check_labels = check_labels
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, **kwargs)
        if annotated_fraction is None:
            annotated_fraction = recorded_fraction(
                self.data_prefix.get("seg_map_path"), self.data_root
            )
        self._metainfo["sparse_fraction"] = annotated_fraction

    def _allowed_values(self) -> np.ndarray:
        classes = self._metainfo.get("classes") or ()
        allowed = np.arange(len(classes))
        if self.label_map:
            allowed = np.array(sorted(self.label_map))
        if self.reduce_zero_label:
            allowed = np.concatenate([[0], allowed + 1])
        return np.union1d(allowed, [self.ignore_index])

    def _check(self, info: dict, allowed: np.ndarray) -> None:
        label = _read_label(info["seg_map_path"], self.backend_args)
        size = _image_size(info["img_path"], self.backend_args)
        if label.shape[:2] != size:
            raise ValueError(
                f"size mismatch: label map {info['seg_map_path']} is {label.shape[:2]}, "
                f"image {info['img_path']} is {size}"
            )
        bad = np.setdiff1d(np.unique(label), allowed)
        if bad.size:
            classes = self._metainfo.get("classes")
            raise ValueError(
                f"label map {info['seg_map_path']} holds values {bad.tolist()} outside the "
                f"classes {list(classes)} (0..{len(classes) - 1}) and ignore_index "
                f"{self.ignore_index}"
            )

    def load_data_list(self) -> List[dict]:
        img_dir = self.data_prefix.get("img_path", None)
        if not img_dir or (self.backend_args is None and not osp.isdir(img_dir)):
            raise FileNotFoundError(f"image folder not found: {img_dir}")
        data_list = super().load_data_list()
        if not data_list:
            raise FileNotFoundError(f"no *{self.img_suffix} images in {img_dir}")
        seg_dir = self.data_prefix.get("seg_map_path", None)
        inst_dir = self.data_prefix.get("inst_path", None)
        if seg_dir:
            _missing(
                [
                    osp.basename(d["seg_map_path"])
                    for d in data_list
                    if not fileio.exists(d["seg_map_path"], backend_args=self.backend_args)
                ],
                "label maps",
                seg_dir,
            )
        if inst_dir:
            for d in data_list:
                rel = osp.relpath(d["img_path"], img_dir)
                d["inst_path"] = osp.join(inst_dir, rel[: -len(self.img_suffix)] + self.inst_suffix)
            _missing(
                [
                    osp.basename(d["inst_path"])
                    for d in data_list
                    if not fileio.exists(d["inst_path"], backend_args=self.backend_args)
                ],
                "instance maps",
                inst_dir,
            )
        if seg_dir and self.check_labels:
            allowed = self._allowed_values()
            for d in data_list:
                self._check(d, allowed)
        return data_list


@DATASETS.register_module()
class LSRBlockDataset(BaseSegDataset):
    """Image blocks with low-resolution labels and the (eta, rho) table of Zhao, Hou et al.

    Args:
        ann_file: block label CSV (relative to ``data_root``), header ``block,z`` (one label per
            block, shared by the classes) or ``block,z_<class>,...`` (one column per table
            class). ``block`` is the block's file name (with or without ``img_suffix``). ''
            lists the blocks in ``data_prefix['img_path']`` without labels (evaluation only).
        table_file: the joint-distribution table (json: classes, labels, eta, rho), relative to
            ``data_root``; its classes are the dataset's classes.
        data_prefix: ``img_path`` (blocks), optional ``seg_map_path`` (high-res masks, required
            in ``test_mode``) and ``highres_path`` (sparse high-res labels, 255 = none, for the
            "& high res" variants; blocks without a file there have no pixel labels).
        **kwargs: the other ``BaseSegDataset`` arguments.

    Raises:
        FileNotFoundError: missing table, CSV, blocks, or masks in test mode.
        KeyError: a block label missing from the table.
        ValueError: a malformed CSV (header, non-integer labels, per-class columns that do not
            match the table's classes).
    """

    METAINFO: dict = dict(classes=None)

    def __init__(
        self,
        ann_file: str = "block_labels.csv",
        table_file: str = "table.json",
        img_suffix: str = ".png",
        seg_map_suffix: str = ".png",
        highres_suffix: str = ".png",
        data_prefix: Optional[dict] = None,
        data_root: Optional[str] = None,
        metainfo: Optional[dict] = None,
        **kwargs,
    ) -> None:
        if data_root is not None and not osp.isabs(table_file):
            table_file = osp.join(data_root, table_file)
        if not osp.isfile(table_file):
            raise FileNotFoundError(f"LSR table not found: {table_file}")
        from sparse_ext.losses.label_super_resolution import load_lsr_table

        self.table_file = table_file
        eta, rho, table_classes = load_lsr_table(table_file)
        self.eta, self.rho = eta, rho
        self.num_block_labels = int(eta.shape[1])
        self.highres_suffix = highres_suffix
        metainfo = dict(metainfo or {})
        classes = metainfo.setdefault("classes", tuple(table_classes))
        if list(classes) != list(table_classes):
            raise ValueError(
                f"metainfo classes {list(classes)} differ from the table's {list(table_classes)} "
                f"({table_file})"
            )
        metainfo.setdefault("lsr_table", table_file)
        metainfo.setdefault("num_block_labels", self.num_block_labels)
        super().__init__(
            ann_file=ann_file,
            img_suffix=img_suffix,
            seg_map_suffix=seg_map_suffix,
            data_prefix=dict(img_path="blocks") if data_prefix is None else data_prefix,
            data_root=data_root,
            metainfo=metainfo,
            **kwargs,
        )

    def _read_block_labels(self) -> Dict[str, Tuple[int, ...]]:
        return read_block_labels(
            self.ann_file,
            self._metainfo["classes"],
            self.num_block_labels,
            suffix=self.img_suffix,
            table=self.table_file,
        )

    def load_data_list(self) -> List[dict]:
        img_dir = self.data_prefix.get("img_path", None)
        seg_dir = self.data_prefix.get("seg_map_path", None)
        highres_dir = self.data_prefix.get("highres_path", None)
        if not img_dir or not osp.isdir(img_dir):
            raise FileNotFoundError(f"block folder not found: {img_dir}")
        if self.ann_file:
            labels: Optional[Dict[str, Tuple[int, ...]]] = self._read_block_labels()
            names = sorted(labels)
        else:
            labels = None
            names = sorted(
                f[: -len(self.img_suffix)]
                for f in fileio.list_dir_or_file(img_dir, list_dir=False, suffix=self.img_suffix)
            )
            if not names:
                raise FileNotFoundError(f"no *{self.img_suffix} blocks in {img_dir}")
        data_list = []
        missing_img, missing_seg = [], []
        for name in names:
            info = dict(
                img_path=osp.join(img_dir, name + self.img_suffix),
                label_map=self.label_map,
                reduce_zero_label=self.reduce_zero_label,
                seg_fields=[],
                num_block_labels=self.num_block_labels,
            )
            if not osp.isfile(info["img_path"]):
                missing_img.append(name + self.img_suffix)
            if labels is not None:
                info["block_label"] = labels[name]
            if seg_dir:
                seg = osp.join(seg_dir, name + self.seg_map_suffix)
                if osp.isfile(seg):
                    info["seg_map_path"] = seg
                elif self.test_mode:
                    missing_seg.append(name + self.seg_map_suffix)
            if highres_dir:
                hr = osp.join(highres_dir, name + self.highres_suffix)
                if osp.isfile(hr):
                    info["highres_path"] = hr
            data_list.append(info)
        _missing(missing_img, "blocks", img_dir)
        _missing(missing_seg, "masks (needed to evaluate)", seg_dir)
        return data_list
