"""Registering partially annotated COCO files (as our converters write them) with Detectron2."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

__all__ = ["register_partial_coco"]

_REQUIRED_KEYS = ("images", "annotations", "categories")


def register_partial_coco(
    name: str,
    json_file: str | os.PathLike,
    image_root: str | os.PathLike,
    metadata: Optional[Mapping[str, Any]] = None,
) -> None:
    """Register a COCO detection file whose annotations may be a subset of the objects.

    A thin layer over :func:`detectron2.data.datasets.register_coco_instances`: boxes-only files
    (no ``segmentation``) load as they are, ``thing_classes`` is set from the categories right away,
    and ``info["sparse_fraction"]`` (written by ``sparse-ext convert subsample``) is copied into the
    dataset's metadata as ``sparse_fraction`` (``None`` when absent). Registering the same name with
    the same files again is a no-op.

    Partial annotation means an image may carry no annotation at all: keep such images with
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS False`` (our configs do); their proposals are all
    unannotated samples for the sparse losses.

    Raises:
        FileNotFoundError: ``json_file`` or ``image_root`` does not exist.
        ValueError: the file is not COCO detection JSON, or ``name`` is taken by other files.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO annotation file not found: {json_file}")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"image folder not found: {image_root}")
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if meta.get("json_file") == json_file and meta.get("image_root") == image_root:
            return
        raise ValueError(
            f"dataset '{name}' is already registered (json_file={meta.get('json_file')!r}, "
            f"image_root={meta.get('image_root')!r}); pick another name"
        )
    with open(json_file) as f:
        try:
            coco = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{json_file} is not valid JSON: {e}") from e
    if not isinstance(coco, dict):
        raise ValueError(f"{json_file}: top level must be a JSON object")
    missing = [k for k in _REQUIRED_KEYS if k not in coco]
    if missing:
        raise ValueError(f"{json_file} is not a COCO detection file: missing key(s) {missing}")
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    info = coco.get("info") or {}
    extra = {
        "thing_classes": [c["name"] for c in categories],
        "sparse_fraction": info.get("sparse_fraction"),
    }
    extra.update(metadata or {})
    register_coco_instances(name, extra, json_file, image_root)
