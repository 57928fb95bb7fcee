"""Instance masks and point annotations -> COCO json (``masks2coco``, ``points2coco``).

Masks: each non-zero label id of an instance label image is one object (ids need not be
consecutive; an id with several disconnected parts stays one object). Segmentations are
compressed RLE (pycocotools), boxes ``[x, y, w, h]`` in pixel-edge coordinates (a single pixel at
column 3, row 5 has bbox ``[3, 5, 1, 1]``), ``area`` = pixel count, ``iscrowd`` 0, and every
annotation carries ``instance_id``, the label id it came from (used to build sparse label maps).

Points (Zhao, Pang et al., MICCAI 2021, Sec. 3.1: "for each key point we generated a 32x32
bounding box centred around it"): a ``box_size`` square centred on each point, clipped to the
image.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from pycocotools import mask as mask_utils

from sparse_ext.data.io import (
    OutputSet,
    PathLike,
    Summary,
    list_images,
    progress,
    read_image,
)

__all__ = ["encode_instances", "image_size", "masks_to_coco", "points_to_coco"]


def image_size(path: PathLike) -> Tuple[int, int]:
    """(height, width) of an image; TIFFs are measured from their header, not decoded."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff", ".svs", ".ndpi", ".btf"):
        import tifffile

        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        try:
            with tifffile.TiffFile(path) as tf:
                page = tf.pages[0]
                return int(page.imagelength), int(page.imagewidth)
        except Exception as e:
            raise ValueError(f"cannot read image {path}: {e}") from e
    shape = read_image(path).shape
    return int(shape[0]), int(shape[1])


def encode_instances(label: np.ndarray) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """Compressed COCO RLE of every non-zero id of a 2-D instance label map, without looping
    over pixels: runs of equal values are found once on the column-major (Fortran) raster that
    COCO RLE uses, grouped by id, and handed to pycocotools in one call.

    Returns:
        ids: (K,) sorted label ids; rles: K RLE dicts ``{"size": [h, w], "counts": str}``.
    """
    if label.ndim != 2:
        raise ValueError(f"instance label map must be 2-D, got shape {label.shape}")
    h, w = label.shape
    flat = label.ravel(order="F")
    n = flat.size
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [n]))
    vals = flat[starts]
    fg = vals != 0
    starts, ends, vals = starts[fg], ends[fg], vals[fg]
    if len(vals) == 0:
        return np.zeros(0, dtype=label.dtype), []
    order = np.argsort(vals, kind="stable")  # runs of one id stay in raster order
    starts, ends, vals = starts[order], ends[order], vals[order]
    ids, first = np.unique(vals, return_index=True)
    prev_end = np.concatenate(([0], ends[:-1]))
    prev_end[first] = 0
    pairs = np.stack([starts - prev_end, ends - starts], axis=1).ravel()
    last = np.concatenate((first[1:], [len(vals)])) - 1
    trailing = n - ends[last]
    chunks = np.split(pairs, 2 * first[1:])
    ucs = [
        {"size": [h, w], "counts": (np.append(c, t) if t else c).astype(np.uint32)}
        for c, t in zip(chunks, trailing)
    ]
    rles = mask_utils.frPyObjects(ucs, h, w)
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return ids, rles


def _majority_class(inst: np.ndarray, classes: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Most frequent class value under each instance id (vectorised bincount)."""
    fg = inst != 0
    idx = np.searchsorted(ids, inst[fg])
    cls = classes[fg].astype(np.int64)
    k = int(cls.max()) + 1 if cls.size else 1
    counts = np.bincount(idx * k + cls, minlength=len(ids) * k).reshape(len(ids), k)
    return counts.argmax(1)


def _mask_sources(masks_dir: Path) -> Tuple[List[str], List[Dict[str, Path]]]:
    """One category (unnamed) for a flat folder, one category per sub-folder otherwise."""
    if not masks_dir.is_dir():
        raise FileNotFoundError(f"mask folder not found: {masks_dir}")
    subdirs = sorted(p for p in masks_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    flat = list_images(masks_dir, "mask")
    if subdirs and flat:
        raise ValueError(
            f"{masks_dir} mixes mask files and sub-folders: use either one folder of instance maps "
            f"or one sub-folder per class"
        )
    if subdirs:
        return [p.name for p in subdirs], [list_images(p, "mask") for p in subdirs]
    return [], [flat]


def masks_to_coco(
    images_dir: PathLike,
    masks_dir: PathLike,
    out_json: PathLike,
    *,
    category_names: Optional[Sequence[str]] = None,
    class_maps_dir: Optional[PathLike] = None,
    allow_empty: bool = False,
    allow_missing: bool = False,
    info: Optional[Dict[str, Any]] = None,
    verbose: bool = True,
) -> Summary:
    """Instance label images -> COCO json with boxes, areas and RLE segmentations.

    Masks are matched to images by file stem. Categories:

    - ``masks_dir`` holds ``<stem>.tif/png`` instance maps: one category, named
      ``category_names[0]`` (default ``"nucleus"``); or, with ``class_maps_dir`` (semantic class
      maps ``<stem>.png``, 0 = background, c >= 1 = class c), each instance takes the most frequent
      class under it and categories are ``1..C`` named by ``category_names`` (default ``"class<c>"``).
    - ``masks_dir`` holds one sub-folder per class (``masks_dir/<class>/<stem>.tif``): one category
      per class map, ids 1.. in sorted folder order, named after the folders.

    ``info`` entries are merged into the file's ``info``.

    Raises:
        FileNotFoundError: a folder is missing. ValueError: a mask without image (or, unless
        ``allow_missing``, an image without mask), image/mask size mismatch, a mask that is not an
        integer 2-D map, negative ids, an all-zero mask (unless ``allow_empty``).
    """
    images_dir, masks_dir, out_json = Path(images_dir), Path(masks_dir), Path(out_json)
    outputs = OutputSet([images_dir, masks_dir, class_maps_dir], files=[out_json])
    images = list_images(images_dir, "image")
    folder_names, sources = _mask_sources(masks_dir)
    classes = list_images(class_maps_dir, "class map") if class_maps_dir is not None else None
    if folder_names and classes is not None:
        raise ValueError("class_maps_dir cannot be combined with one mask sub-folder per class")
    for src in sources:
        orphans = sorted(set(src) - set(images))
        if orphans:
            raise ValueError(f"masks without a matching image in {images_dir}: {orphans[:10]}")
    if not allow_missing:
        for src in sources:
            missing = sorted(set(images) - set(src))
            if missing:
                raise ValueError(
                    f"images without a mask in {masks_dir}: {missing[:10]} "
                    f"(pass allow_missing=True / --allow-missing to keep them unannotated)"
                )
    if classes is not None:
        missing = sorted(set().union(*sources) - set(classes))
        if missing:
            raise ValueError(f"masks without a class map in {class_maps_dir}: {missing[:10]}")

    if folder_names:
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(folder_names)]
    elif classes is not None:
        categories = None  # decided once the class values are known
    else:
        categories = [{"id": 1, "name": (category_names or ["nucleus"])[0]}]

    coco_images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    max_class = 0
    empty = 0
    with progress(
        images.items(), "masks2coco", total=len(images), verbose=verbose, unit="image"
    ) as bar:
        for image_id, (stem, img_path) in enumerate(bar, start=1):
            h, w = image_size(img_path)
            coco_images.append(
                {"id": image_id, "file_name": img_path.name, "width": w, "height": h}
            )
            n_before = len(annotations)
            for cat_index, src in enumerate(sources):
                if stem not in src:
                    continue
                inst = read_image(src[stem])
                if inst.ndim == 3 and inst.shape[-1] == 1:
                    inst = inst[..., 0]
                if inst.ndim != 2:
                    raise ValueError(
                        f"mask {src[stem]} must be a 2-D label map, got shape {inst.shape}"
                    )
                if inst.shape != (h, w):
                    raise ValueError(
                        f"size mismatch: mask {src[stem]} is {inst.shape[1]}x{inst.shape[0]} but image "
                        f"{img_path} is {w}x{h} (width x height)"
                    )
                if not np.issubdtype(inst.dtype, np.integer):
                    if not np.array_equal(inst, np.round(inst)):
                        raise ValueError(
                            f"mask {src[stem]} holds non-integer values ({inst.dtype})"
                        )
                    inst = inst.astype(np.int64)
                if inst.min() < 0:
                    raise ValueError(f"mask {src[stem]} holds negative label ids")
                ids, rles = encode_instances(inst)
                if len(ids) == 0:
                    continue
                if classes is not None:
                    cmap = read_image(classes[stem])
                    if cmap.shape != inst.shape:
                        raise ValueError(
                            f"size mismatch: class map {classes[stem]} has shape {cmap.shape}, mask "
                            f"{src[stem]} has shape {inst.shape}"
                        )
                    cat = _majority_class(inst, cmap, ids)
                    if (cat == 0).any():
                        bad = ids[cat == 0][:5].tolist()
                        raise ValueError(
                            f"instances {bad} of {src[stem]} lie mostly on class 0 (background) of "
                            f"{classes[stem]}"
                        )
                    max_class = max(max_class, int(cat.max()))
                else:
                    cat = np.full(len(ids), cat_index + 1)
                areas = mask_utils.area(rles)
                boxes = mask_utils.toBbox(rles)
                start = len(annotations) + 1
                annotations += [
                    {
                        "id": start + k,
                        "image_id": image_id,
                        "category_id": int(cat[k]),
                        "bbox": [float(v) for v in boxes[k]],
                        "area": int(areas[k]),
                        "segmentation": rles[k],
                        "iscrowd": 0,
                        "instance_id": int(ids[k]),
                    }
                    for k in range(len(ids))
                ]
            if len(annotations) == n_before:
                empty += 1
                if not allow_empty and any(stem in src for src in sources):
                    raise ValueError(
                        f"mask for image '{stem}' is empty (all zero); pass allow_empty=True / "
                        f"--allow-empty to keep images without objects"
                    )
    if categories is None:
        names = list(category_names or [])
        categories = [
            {"id": c, "name": names[c - 1] if c - 1 < len(names) else f"class{c}"}
            for c in range(1, max(max_class, len(names)) + 1)
        ]
    coco = {
        "info": {
            "description": f"instance masks from {masks_dir}",
            "source": "sparse_ext masks2coco",
            **(info or {}),
        },
        "images": coco_images,
        "annotations": annotations,
        "categories": categories,
    }
    with outputs:
        outputs.write_json(out_json, coco)
    return Summary(
        "masks2coco",
        images=len(coco_images),
        kept=len(annotations),
        dropped=0,
        outputs=[str(out_json)],
        extra={"images without objects": empty} if empty else {},
    ).report(verbose)


# -- points ---------------------------------------------------------------------------------------


def _read_points(path: Path) -> List[Dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"points file not found: {path}")
    if path.suffix.lower() == ".json":
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not valid JSON: {e}") from e
        if isinstance(data, dict):
            if "points" not in data:
                raise KeyError(f"{path}: expected a list of points or an object with key 'points'")
            data = data["points"]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValueError(f"{path}: points must be a list of objects {{image, x, y[, class]}}")
        rows = data
    else:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                raise ValueError(f"{path} is empty (need a header image,x,y[,class])")
            rows = list(reader)
            fields = reader.fieldnames
        for key in ("image", "x", "y"):
            if key not in fields:
                raise KeyError(f"{path}: missing column '{key}' (header has {fields})")
    for i, r in enumerate(rows):
        for key in ("image", "x", "y"):
            if key not in r:
                raise KeyError(f"{path}: point {i} has no key '{key}'")
    return rows


def points_to_coco(
    images_dir: PathLike,
    points_csv: PathLike,
    out_json: PathLike,
    box_size: float = 32,
    *,
    category_names: Optional[Sequence[str]] = None,
    verbose: bool = True,
) -> Summary:
    """Point annotations (CSV or JSON records ``image, x, y[, class]``) -> COCO boxes.

    ``image`` is a file name or stem in ``images_dir``; ``x, y`` are pixel coordinates (x = column);
    each point becomes a ``box_size`` square centred on it, clipped to the image
    (``[max(x - s/2, 0), max(y - s/2, 0)]`` to ``[min(x + s/2, W), min(y + s/2, H)]``); the point
    is kept as ``"point": [x, y]``. Classes: without a ``class`` column one category
    (``category_names[0]``, default ``"object"``); integer classes are category ids (names from
    ``category_names[id - 1]``); string classes become categories in ``category_names`` order
    (default: sorted). Images without points are kept with no annotations.

    Raises:
        FileNotFoundError / KeyError / ValueError: missing files or columns, non-numeric
        coordinates, unknown images or classes, points outside their image, box_size <= 0.
    """
    images_dir, points_csv, out_json = Path(images_dir), Path(points_csv), Path(out_json)
    if not box_size > 0:
        raise ValueError(f"box_size must be > 0, got {box_size}")
    outputs = OutputSet([images_dir, points_csv], files=[out_json])
    images = list_images(images_dir, "image")
    rows = _read_points(points_csv)
    by_name = {p.name: s for s, p in images.items()}
    stems = []
    for i, r in enumerate(rows):
        key = str(r["image"])
        stem = by_name.get(key, key if key in images else Path(key).stem)
        if stem not in images:
            raise ValueError(
                f"{points_csv}: point {i} refers to unknown image '{key}' in {images_dir}"
            )
        stems.append(stem)
    try:
        xy = np.array([[float(r["x"]), float(r["y"])] for r in rows], dtype=np.float64).reshape(
            -1, 2
        )
    except ValueError as e:
        raise ValueError(f"{points_csv}: coordinates must be numbers ({e})") from e
    has_class = any(r.get("class") not in (None, "") for r in rows)
    raw = [str(r.get("class", "")).strip() for r in rows]
    names = list(category_names or [])
    if not has_class:
        categories = [{"id": 1, "name": names[0] if names else "object"}]
        cat = np.ones(len(rows), np.int64)
    elif all(c.lstrip("-").isdigit() for c in raw):
        cat = np.array([int(c) for c in raw], np.int64)
        if (cat < 1).any():
            raise ValueError(f"{points_csv}: integer classes must be >= 1 (0 is background)")
        n_cat = max(int(cat.max()), len(names))
        categories = [
            {"id": c, "name": names[c - 1] if c - 1 < len(names) else str(c)}
            for c in range(1, n_cat + 1)
        ]
    else:
        order = names or sorted(set(raw))
        unknown = sorted(set(raw) - set(order))
        if unknown:
            raise ValueError(f"{points_csv}: classes {unknown} are not in category_names {order}")
        lookup = {n: i + 1 for i, n in enumerate(order)}
        cat = np.array([lookup[c] for c in raw], np.int64)
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(order)]

    sizes = {s: image_size(p) for s, p in images.items()}
    hw = np.array([sizes[s] for s in stems], dtype=np.float64).reshape(-1, 2)
    outside = (
        ~np.isfinite(xy).all(1)
        | (xy[:, 0] < 0)
        | (xy[:, 1] < 0)
        | (xy[:, 0] > hw[:, 1])
        | (xy[:, 1] > hw[:, 0])
    )
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"{points_csv}: point {i} ({xy[i, 0]}, {xy[i, 1]}) lies outside image '{stems[i]}' of "
            f"size {int(hw[i, 1])}x{int(hw[i, 0])} (width x height)"
        )
    half = box_size / 2.0
    x0 = np.clip(xy[:, 0] - half, 0, hw[:, 1])
    y0 = np.clip(xy[:, 1] - half, 0, hw[:, 0])
    x1 = np.clip(xy[:, 0] + half, 0, hw[:, 1])
    y1 = np.clip(xy[:, 1] + half, 0, hw[:, 0])
    boxes = np.stack([x0, y0, x1 - x0, y1 - y0], 1)
    clipped = int(((boxes[:, 2] < box_size) | (boxes[:, 3] < box_size)).sum())
    image_ids = {s: i for i, s in enumerate(images, start=1)}
    coco = {
        "info": {"description": f"points from {points_csv}", "source": "sparse_ext points2coco"},
        "images": [
            {"id": image_ids[s], "file_name": p.name, "width": sizes[s][1], "height": sizes[s][0]}
            for s, p in images.items()
        ],
        "annotations": [
            {
                "id": k + 1,
                "image_id": image_ids[stems[k]],
                "category_id": int(cat[k]),
                "bbox": boxes[k].tolist(),
                "area": float(boxes[k, 2] * boxes[k, 3]),
                "iscrowd": 0,
                "point": xy[k].tolist(),
            }
            for k in range(len(rows))
        ],
        "categories": categories,
    }
    with outputs:
        outputs.write_json(out_json, coco)
    return Summary(
        "points2coco",
        images=len(images),
        kept=len(rows),
        dropped=0,
        outputs=[str(out_json)],
        extra={"boxes clipped at the border": clipped},
    ).report(verbose)
