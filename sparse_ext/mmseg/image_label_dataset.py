"""``ImageLabelDataset``: images with one image-level class each, for max-min training.

Two ways to list the samples:

1. A list file (``ann_file``), CSV with a header or JSON::

       image,label,mask                 [{"image": "a.png", "label": "nuclei", "mask": "a.png"},
       a.png,nuclei,a.png                ...]
       b.png,0,b.png                    (or {"samples": [...]})

   ``image`` is relative to ``data_prefix['img_path']``, ``mask`` (optional column) to
   ``data_prefix['seg_map_path']``; ``label`` is a class index or a name from
   ``metainfo['image_classes']``. Either every row has a mask or none does.
2. No ``ann_file``: class folders, ``<img_path>/<class name>/<file><img_suffix>``, masks (when
   ``seg_map_path`` is set) at ``<seg_map_path>/<class name>/<stem><seg_map_suffix>``. Without
   ``image_classes`` in the metainfo the sorted folder names are the classes.

Each sample's class index is ``img_label`` in its data info; add ``'img_label'`` to
``PackSegInputs``' ``meta_keys`` so that it reaches the segmentor in ``data_sample.metainfo``.
Pixel masks (0 background, 1 foreground, 255 ignore) are for evaluation only: the max-min train
pipeline does not load them and ``MaxMinSegmentor`` never reads ``gt_sem_seg`` in training.
The segmentation classes are fixed to ``('background', 'foreground')``; the image classes are a
separate metainfo entry, ``image_classes``.
"""

from __future__ import annotations

import csv
import json
import os
import os.path as osp
from typing import Any, Dict, List, Optional, Sequence

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

__all__ = ["ImageLabelDataset"]


@DATASETS.register_module()
class ImageLabelDataset(BaseSegDataset):
    """Images with image-level classes (and optional evaluation masks); see the module docstring.

    Args:
        ann_file: CSV/JSON list file, or '' for the class-folder layout.
        img_suffix: image suffix in the class-folder layout.
        seg_map_suffix: mask suffix in the class-folder layout.
        metainfo: may set ``image_classes`` (names of the image classes, in label order).
        **kwargs: the other ``BaseSegDataset`` arguments (data_root, data_prefix, pipeline...).
    """

    METAINFO = dict(
        classes=("background", "foreground"),
        palette=[[0, 0, 0], [255, 255, 255]],
        image_classes=None,
    )

    def __init__(
        self,
        ann_file: str = "",
        img_suffix: str = ".png",
        seg_map_suffix: str = ".png",
        metainfo: Optional[dict] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            ann_file=ann_file,
            img_suffix=img_suffix,
            seg_map_suffix=seg_map_suffix,
            metainfo=metainfo,
            **kwargs,
        )

    # -- list file -------------------------------------------------------------------------

    def _read_rows(self) -> List[Dict[str, Any]]:
        path = self.ann_file
        if not osp.isfile(path):
            raise FileNotFoundError(f"ImageLabelDataset: list file {path!r} does not exist")
        if path.lower().endswith(".json"):
            with open(path) as f:
                rows = json.load(f)
            if isinstance(rows, dict):
                if "samples" not in rows:
                    raise KeyError(f"{path}: a JSON object list file needs a 'samples' key")
                rows = rows["samples"]
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ValueError(f"{path}: expected a list of objects with 'image' and 'label'")
        elif path.lower().endswith((".csv", ".txt")):
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        else:
            raise ValueError(f"{path}: list file must be .csv or .json")
        for i, row in enumerate(rows):
            for key in ("image", "label"):
                if row.get(key) in (None, ""):
                    raise KeyError(f"{path}: row {i} has no {key!r} (columns: {sorted(row)})")
        return rows

    def _class_index(self, label: Any, where: str) -> int:
        classes = self._metainfo.get("image_classes")
        if isinstance(label, str) and not label.strip().lstrip("-").isdigit():
            if not classes or label not in classes:
                raise KeyError(f"{where}: image class {label!r} is not in image_classes {classes}")
            return list(classes).index(label)
        index = int(label)
        if index < 0 or (classes and index >= len(classes)):
            n = len(classes) if classes else "any"
            raise ValueError(f"{where}: image label {index} outside the {n} image classes")
        return index

    def _info(self, img_path: str, seg_path: Optional[str], label: int) -> Dict[str, Any]:
        if not osp.isfile(img_path):
            raise FileNotFoundError(f"ImageLabelDataset: image {img_path!r} does not exist")
        info: Dict[str, Any] = dict(
            img_path=img_path,
            img_label=label,
            label_map=self.label_map,
            reduce_zero_label=self.reduce_zero_label,
            seg_fields=[],
        )
        if seg_path is not None:
            if not osp.isfile(seg_path):
                raise FileNotFoundError(f"ImageLabelDataset: mask {seg_path!r} does not exist")
            info["seg_map_path"] = seg_path
        return info

    def load_data_list(self) -> List[dict]:
        img_dir = self.data_prefix.get("img_path", "") or ""
        seg_dir = self.data_prefix.get("seg_map_path") or None
        if self.ann_file:
            rows = self._read_rows()
            with_mask = [bool(r.get("mask")) for r in rows]
            if any(with_mask) and not all(with_mask):
                first = with_mask.index(False)
                raise ValueError(
                    f"{self.ann_file}: row {first} has no mask while others do; "
                    "give every row a mask or none"
                )
            data_list = []
            for i, row in enumerate(rows):
                label = self._class_index(row["label"], f"{self.ann_file} row {i}")
                seg = osp.join(seg_dir or "", row["mask"]) if row.get("mask") else None
                data_list.append(self._info(osp.join(img_dir, row["image"]), seg, label))
            return data_list
        return self._load_class_folders(img_dir, seg_dir)

    # -- class folders ---------------------------------------------------------------------

    def _load_class_folders(self, img_dir: str, seg_dir: Optional[str]) -> List[dict]:
        if not osp.isdir(img_dir):
            raise FileNotFoundError(f"ImageLabelDataset: image folder {img_dir!r} does not exist")
        folders = sorted(d for d in os.listdir(img_dir) if osp.isdir(osp.join(img_dir, d)))
        classes: Optional[Sequence[str]] = self._metainfo.get("image_classes")
        if not classes:
            classes = tuple(folders)
            self._metainfo["image_classes"] = classes
        unknown = sorted(set(folders) - set(classes))
        if unknown:
            raise KeyError(f"{img_dir}: class folders {unknown} are not in image_classes {classes}")
        data_list = []
        for index, name in enumerate(classes):
            cdir = osp.join(img_dir, name)
            if not osp.isdir(cdir):
                continue
            for fname in sorted(os.listdir(cdir)):
                if not fname.endswith(self.img_suffix):
                    continue
                seg = None
                if seg_dir is not None:
                    stem = fname[: -len(self.img_suffix)]
                    seg = osp.join(seg_dir, name, stem + self.seg_map_suffix)
                data_list.append(self._info(osp.join(cdir, fname), seg, index))
        if not data_list:
            raise FileNotFoundError(
                f"ImageLabelDataset: no '*{self.img_suffix}' image under {img_dir}"
            )
        return data_list
