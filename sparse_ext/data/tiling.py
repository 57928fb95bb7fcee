"""Cut large images into overlapping tiles with their annotations (``tile``), and merge per-tile
detections back to image coordinates with class-wise NMS (``merge``).

Memory stays proportional to a tile: TIFF/SVS images are read region by region (only the TIFF
tiles or strips that intersect the region are decoded, with tifffile; uncompressed contiguous data
is memory-mapped), annotations are assigned to tiles by index arithmetic on the tile grid (no
tile x box loop). PNG/JPEG cannot be read partially and are loaded whole. ``tiffslide`` is used
when asked for (``backend="tiffslide"``) and installed; it is not a dependency.

Zhao, Pang, Liu, Ye, "Positive-unlabeled learning for cell detection in histopathology images with
incomplete annotations", MICCAI 2021, Sec. 3.1: "we generated prediction boxes for each 500x500
patch, mapped the coordinates of these boxes back into the image, and performed non-maximum
suppression to merge duplicate bounding boxes."
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from sparse_ext.data.coco import encode_instances
from sparse_ext.data.io import (
    IMAGE_EXTENSIONS,
    TIFF_EXTENSIONS,
    OutputSet,
    PathLike,
    Summary,
    list_images,
    load_coco_columns,
    progress,
    read_image,
)
from sparse_ext.data.patches import grid_origins, grid_pairs

__all__ = ["RegionReader", "merge_detections", "open_region_reader", "tile_image"]


# -- lazy region reading --------------------------------------------------------------------------


class RegionReader:
    """Read ``[y, y + h) x [x, x + w)`` regions of an image; ``shape`` is (H, W) or (H, W, C)."""

    shape: Tuple[int, ...]
    dtype: np.dtype

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> RegionReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _ArrayReader(RegionReader):
    def __init__(self, array: np.ndarray):
        self.array = array
        self.shape, self.dtype = array.shape, array.dtype

    def read(self, y, x, h, w):
        return np.array(self.array[y : y + h, x : x + w])


class _TiffSegmentReader(RegionReader):
    """Decode only the TIFF segments (tiles or strips) of the first page (the full-resolution level
    of a pyramid) that intersect the region."""

    def __init__(self, path: Path):
        import tifffile

        self.path = path
        self._tf = tifffile.TiffFile(path)
        page = self._tf.series[0].pages[0] if self._tf.series else self._tf.pages[0]
        self.page = page
        if page.imagedepth > 1 or (page.planarconfig == 2 and page.samplesperpixel > 1):
            self.close()
            raise ValueError(f"{path}: volumetric or planar-separate TIFF pages are not supported")
        self.shape, self.dtype = tuple(page.shape), page.dtype
        self.chunk_h, self.chunk_w = page.chunks[0], page.chunks[1]
        self.grid_w = -(-page.imagewidth // page.tilewidth) if page.is_tiled else 1
        self._mmap = None
        if page.is_contiguous and page.is_memmappable:
            offset = page.dataoffsets[0]
            dtype = np.dtype(self._tf.byteorder + page.dtype.char)
            self._mmap = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=page.shape)

    def read(self, y, x, h, w):
        if self._mmap is not None:
            return np.array(self._mmap[y : y + h, x : x + w], dtype=self.dtype)
        page, fh = self.page, self._tf.filehandle
        out = np.zeros((h, w) + tuple(self.shape[2:]), self.dtype)
        ch, cw = self.chunk_h, self.chunk_w
        for iy in range(y // ch, (y + h - 1) // ch + 1):
            for ix in range(x // cw, (x + w - 1) // cw + 1):
                index = iy * self.grid_w + ix
                count = page.databytecounts[index]
                if count == 0:
                    continue  # sparse segment: zeros
                fh.seek(page.dataoffsets[index])
                try:
                    seg, _, shape = page.decode(fh.read(count), index, jpegtables=page.jpegtables)
                except Exception as e:  # e.g. a codec tifffile cannot decode without imagecodecs
                    raise ValueError(
                        f"cannot decode {self.path} ({page.compression.name} compression): {e}; "
                        f"JPEG/LZW/JPEG2000 TIFFs need `pip install imagecodecs` (or tiffslide)"
                    ) from e
                seg = seg.reshape(shape[1], shape[2], *self.shape[2:])
                sy, sx = iy * ch, ix * cw
                y0, y1 = max(y, sy), min(y + h, sy + seg.shape[0])
                x0, x1 = max(x, sx), min(x + w, sx + seg.shape[1])
                out[y0 - y : y1 - y, x0 - x : x1 - x] = seg[y0 - sy : y1 - sy, x0 - sx : x1 - sx]
        return out

    def close(self):
        self._mmap = None
        self._tf.close()


class _TiffSlideReader(RegionReader):
    def __init__(self, path: Path):
        try:
            import tiffslide
        except ImportError as e:
            raise ImportError("backend='tiffslide' needs `pip install tiffslide`") from e
        self._slide = tiffslide.TiffSlide(str(path))
        w, h = self._slide.dimensions
        probe = self._slide.read_region((0, 0), 0, (1, 1), as_array=True)
        self.shape, self.dtype = (h, w) + probe.shape[2:], probe.dtype

    def read(self, y, x, h, w):
        return self._slide.read_region((x, y), 0, (w, h), as_array=True)

    def close(self):
        self._slide.close()


def open_region_reader(path: PathLike, backend: str = "auto") -> RegionReader:
    """A :class:`RegionReader` for ``path``: tifffile segments/memmap for TIFF-like files
    (``auto``/``tifffile``), tiffslide when asked, a whole-image read otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    if backend not in ("auto", "tifffile", "tiffslide"):
        raise ValueError(f"backend must be 'auto', 'tifffile' or 'tiffslide', got {backend!r}")
    if backend == "tiffslide":
        return _TiffSlideReader(path)
    if path.suffix.lower() in TIFF_EXTENSIONS:
        try:
            return _TiffSegmentReader(path)
        except Exception as e:
            if str(path) in str(e):
                raise
            raise ValueError(f"cannot read {path} with tifffile: {e}") from e
    if backend == "tifffile":
        raise ValueError(f"{path} is not a TIFF file (backend='tifffile')")
    return _ArrayReader(read_image(path))


# -- tiling ---------------------------------------------------------------------------------------


def _instance_areas(reader: RegionReader, block: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel count of every instance id of a lazily read label map, one block at a time."""
    h, w = reader.shape[:2]
    found, counts = [], []
    for y in range(0, h, block):
        for x in range(0, w, block):
            u, c = np.unique(
                reader.read(y, x, min(block, h - y), min(block, w - x)), return_counts=True
            )
            found.append(u.astype(np.int64))
            counts.append(c)
    ids, inverse = np.unique(np.concatenate(found), return_inverse=True)
    return ids, np.bincount(inverse, weights=np.concatenate(counts)).astype(np.int64)


def _slide_annotations(coco: Optional[Dict[str, Any]], arrays, name: str) -> Optional[np.ndarray]:
    if coco is None:
        return None
    stem = Path(name).stem
    ids = [im["id"] for im in coco["images"] if Path(im["file_name"]).stem == stem]
    if not ids:
        return np.zeros(0, np.int64)
    return np.flatnonzero(arrays.image_ids == ids[0])


def tile_image(
    images: PathLike,
    out_dir: PathLike,
    tile: int = 1024,
    overlap: int = 128,
    *,
    coco_json: Optional[PathLike] = None,
    masks: Optional[PathLike] = None,
    min_visible: float = 0.5,
    ext: str = ".png",
    backend: str = "auto",
    verbose: bool = True,
) -> Summary:
    """Cut an image (or every image of a folder) into ``tile`` x ``tile`` tiles overlapping by at
    least ``overlap`` (the last row/column is aligned to the image end; images smaller than a tile
    give one smaller tile), and carry the annotations along.

    Writes ``out_dir/images/<stem>_x<X>_y<Y><ext>`` (X, Y = tile origin in image pixels) and
    ``out_dir/tiles.json``: COCO with one image per tile (extra keys ``slide_id``, ``x0``, ``y0``),
    ``slides`` (the source images: id, file_name, width, height) and ``tiling``
    (``tile``, ``overlap``). Annotations:

    - from ``coco_json`` (boxes of the source images, matched by file stem): each box is clipped to
      every tile it intersects and kept there when at least ``min_visible`` of its area is inside;
      kept boxes record ``slide_annotation_id``. Segmentations are not carried (use ``masks``).
    - from ``masks`` (an instance label image, or a folder of them matched by stem, read lazily
      too): per-tile instance maps ``out_dir/masks/<tile name>.tif`` and RLE segmentations of the
      pieces, kept when at least ``min_visible`` of the instance's pixels lie in the tile.
    """
    images, out_dir = Path(images), Path(out_dir)
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got {tile=} {overlap=}")
    if not 0.0 <= min_visible <= 1.0:
        raise ValueError(f"min_visible must be in [0, 1], got {min_visible}")
    if coco_json is not None and masks is not None:
        raise ValueError("give either coco_json (boxes) or masks (instance maps), not both")
    if ext.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"ext must be one of {IMAGE_EXTENSIONS}, got {ext!r}")
    if images.is_dir():
        sources = list_images(images, "image")
    elif images.is_file():
        sources = {images.stem: images}
    else:
        raise FileNotFoundError(f"image or folder not found: {images}")
    outputs = OutputSet(
        [images, masks, coco_json],
        files=[out_dir / "tiles.json"],
        folders=[out_dir / "images"] + ([out_dir / "masks"] if masks is not None else []),
    )
    mask_files: Dict[str, Path] = {}
    if masks is not None:
        masks = Path(masks)
        mask_files = list_images(masks, "mask") if masks.is_dir() else {images.stem: masks}
        missing = sorted(set(sources) - set(mask_files))
        if missing:
            raise ValueError(f"images without an instance mask: {missing[:10]}")
    coco, arrays = load_coco_columns(coco_json) if coco_json is not None else (None, None)
    with outputs:
        summary = _tile_slides(
            outputs,
            sources,
            mask_files,
            coco,
            arrays,
            out_dir=out_dir,
            description=f"tiles of {images}",
            tile=tile,
            overlap=overlap,
            min_visible=min_visible,
            ext=ext,
            backend=backend,
            verbose=verbose,
        )
    return summary.report(verbose)


def _tile_slides(
    outputs: OutputSet,
    sources: Dict[str, Path],
    mask_files: Dict[str, Path],
    coco: Optional[Dict[str, Any]],
    arrays,
    *,
    out_dir: Path,
    description: str,
    tile: int,
    overlap: int,
    min_visible: float,
    ext: str,
    backend: str,
    verbose: bool,
) -> Summary:
    """The work of :func:`tile_image`: every file is staged in ``outputs``, tiles.json last."""
    tiles: List[Dict[str, Any]] = []
    slides: List[Dict[str, Any]] = []
    anns: List[Dict[str, Any]] = []
    dropped = 0
    for slide_id, (stem, path) in enumerate(sources.items(), start=1):
        with open_region_reader(path, backend) as reader:
            h, w = reader.shape[:2]
            slides.append({"id": slide_id, "file_name": path.name, "width": w, "height": h})
            xs, ys = grid_origins(w, tile, overlap), grid_origins(h, tile, overlap)
            tw, th = min(tile, w), min(tile, h)
            first_tile_id = len(tiles) + 1
            for y0 in ys:
                for x0 in xs:
                    name = f"{stem}_x{int(x0)}_y{int(y0)}{ext}"
                    tiles.append(
                        {
                            "id": len(tiles) + 1,
                            "file_name": name,
                            "width": tw,
                            "height": th,
                            "slide_id": slide_id,
                            "x0": int(x0),
                            "y0": int(y0),
                        }
                    )
            mask_reader = None
            if mask_files:
                mask_reader = open_region_reader(mask_files[stem], backend)
                if mask_reader.shape[:2] != (h, w):
                    mask_reader.close()
                    raise ValueError(
                        f"size mismatch: mask {mask_files[stem]} has shape {mask_reader.shape}, "
                        f"image {path} has shape {reader.shape}"
                    )
                inst_ids, inst_areas = _instance_areas(mask_reader, tile)
            try:
                with progress(
                    tiles[first_tile_id - 1 :], f"tile {stem}", verbose=verbose, unit="tile"
                ) as bar:
                    for t in bar:
                        region = reader.read(t["y0"], t["x0"], th, tw)
                        outputs.write_image(out_dir / "images" / t["file_name"], region)
                        del region
                        if mask_reader is not None:
                            piece = mask_reader.read(t["y0"], t["x0"], th, tw)
                            kept, lost = _mask_tile_annotations(
                                piece, t["id"], inst_ids, inst_areas, min_visible, len(anns)
                            )
                            anns += kept
                            dropped += lost
                            mask_name = Path(t["file_name"]).with_suffix(".tif").name
                            outputs.write_image(out_dir / "masks" / mask_name, piece)
            finally:
                if mask_reader is not None:
                    mask_reader.close()
        if coco is not None:
            sel = _slide_annotations(coco, arrays, path.name)
            kept, lost = _box_tile_annotations(
                coco, arrays, sel, xs, ys, tile, tw, th, first_tile_id, min_visible, len(anns)
            )
            anns += kept
            dropped += lost
    if coco is not None:
        categories = coco["categories"]
    else:
        categories = [{"id": 1, "name": "nucleus"}] if mask_files else []
    out = {
        "info": {"description": description, "source": "sparse_ext tile"},
        "tiling": {"tile": tile, "overlap": overlap},
        "slides": slides,
        "images": tiles,
        "annotations": anns,
        "categories": categories,
    }
    outputs.write_json(out_dir / "tiles.json", out)
    return Summary(
        "tile",
        images=len(slides),
        kept=len(anns),
        dropped=dropped,
        outputs=[str(out_dir / "tiles.json")],
        extra={"tiles": len(tiles)},
    )


def _box_tile_annotations(coco, arrays, sel, xs, ys, tile, tw, th, first_tile_id, min_visible, n0):
    """Clip each box to every tile it intersects (index arithmetic on the grid, no loop)."""
    if sel is None or len(sel) == 0:
        return [], 0
    b = arrays.bboxes[sel]
    bx0, by0, bx1, by1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    # tile j intersects [b0, b1)  <=>  xs[j] < b1 and xs[j] + tile > b0 (points: b0 == b1 inside)
    lo_x = np.searchsorted(xs, bx0 - tw, "right")
    hi_x = np.searchsorted(xs, np.maximum(bx1, bx0 + 1e-9), "left")
    lo_y = np.searchsorted(ys, by0 - th, "right")
    hi_y = np.searchsorted(ys, np.maximum(by1, by0 + 1e-9), "left")
    item, cell = grid_pairs(lo_x, hi_x, lo_y, hi_y, len(xs))
    ox, oy = xs[cell % len(xs)], ys[cell // len(xs)]
    cx0 = np.maximum(bx0[item], ox)
    cy0 = np.maximum(by0[item], oy)
    cx1 = np.minimum(bx1[item], ox + tw)
    cy1 = np.minimum(by1[item], oy + th)
    area = b[item, 2] * b[item, 3]
    clipped = np.maximum(cx1 - cx0, 0) * np.maximum(cy1 - cy0, 0)
    visible = np.where(area > 0, clipped / np.where(area > 0, area, 1), 1.0)
    keep = visible >= min_visible - 1e-12
    src = coco["annotations"]
    out = []
    for k in np.flatnonzero(keep):
        a = src[sel[item[k]]]
        rec = {
            "id": n0 + len(out) + 1,
            "image_id": int(first_tile_id + cell[k]),
            "category_id": a["category_id"],
            "bbox": [
                float(cx0[k] - ox[k]),
                float(cy0[k] - oy[k]),
                float(cx1[k] - cx0[k]),
                float(cy1[k] - cy0[k]),
            ],
            "area": float(clipped[k]),
            "iscrowd": a.get("iscrowd", 0),
            "slide_annotation_id": a["id"],
        }
        for extra in ("instance_id", "score"):
            if extra in a:
                rec[extra] = a[extra]
        out.append(rec)
    # an annotation is dropped when no tile keeps it
    lost = len(sel) - len(np.unique(item[keep]))
    return out, int(lost)


def _mask_tile_annotations(piece, tile_id, inst_ids, inst_areas, min_visible, n0):
    from pycocotools import mask as mask_utils

    ids, rles = encode_instances(piece)
    if len(ids) == 0:
        return [], 0
    areas = mask_utils.area(rles)
    total = inst_areas[np.searchsorted(inst_ids, ids)]
    keep = areas >= min_visible * total - 1e-9
    boxes = mask_utils.toBbox(rles)
    out = [
        {
            "id": n0 + j + 1,
            "image_id": tile_id,
            "category_id": 1,
            "bbox": [float(v) for v in boxes[k]],
            "area": int(areas[k]),
            "segmentation": rles[k],
            "iscrowd": 0,
            "instance_id": int(ids[k]),
        }
        for j, k in enumerate(np.flatnonzero(keep))
    ]
    return out, int((~keep).sum())


# -- merging --------------------------------------------------------------------------------------


def _batched_nms(
    boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, iou: float
) -> np.ndarray:
    """Indices kept by group-wise NMS, via torchvision or mmcv (whichever is installed)."""
    import torch

    b = torch.as_tensor(boxes, dtype=torch.float32)
    s = torch.as_tensor(scores, dtype=torch.float32)
    g = torch.as_tensor(groups, dtype=torch.int64)
    try:
        from torchvision.ops import batched_nms

        return batched_nms(b, s, g, iou).numpy()
    except ImportError:
        pass
    try:
        from mmcv.ops import batched_nms as mmcv_batched_nms
    except ImportError as e:
        raise ImportError(
            "merge needs an NMS implementation: install torchvision (`pip install torchvision`) "
            "or mmcv with compiled ops (mmcv==2.1.0, see README)"
        ) from e
    _, keep = mmcv_batched_nms(b, s, g, dict(type="nms", iou_threshold=iou))
    return keep.numpy()


def _load_detections(path: Path) -> List[Dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"detections file not found: {path}")
    with open(path) as f:
        try:
            dets = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
    if isinstance(dets, dict):
        if "annotations" not in dets:
            raise KeyError(
                f"{path}: expected a list of detections or a COCO file with 'annotations'"
            )
        dets = dets["annotations"]
    if not isinstance(dets, list):
        raise ValueError(f"{path}: detections must be a list")
    for i, d in enumerate(dets):
        for key in ("image_id", "category_id", "bbox"):
            if not isinstance(d, dict) or key not in d:
                raise KeyError(f"{path}: detection {i} has no key '{key}'")
    return dets


def merge_detections(
    tiles_json: PathLike,
    detections_json: PathLike,
    out_json: PathLike,
    *,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.0,
    edge_margin: Optional[float] = 1.0,
    verbose: bool = True,
) -> Summary:
    """Map per-tile detections back to image coordinates and merge duplicates with class-wise NMS.

    ``tiles_json`` is the file :func:`tile_image` wrote; ``detections_json`` a COCO results list
    (``image_id`` = tile id, ``category_id``, ``bbox`` [x, y, w, h] in tile pixels, ``score``;
    missing scores count as 1) or a COCO file whose ``annotations`` are the detections. Writes a
    COCO results list with ``image_id`` = the source image's id in ``tiles_json['slides']``.

    Before NMS, a detection that touches a tile edge shared with a neighbouring tile (within
    ``edge_margin`` pixels) and lies entirely in the overlap with that neighbour is removed: the
    neighbour saw the whole object, this tile only a cut piece whose IoU with the whole can fall
    below the NMS threshold. Objects wider than the overlap are always kept. ``edge_margin=None``
    turns this off (plain NMS, as in Zhao, Pang et al., MICCAI 2021, Sec. 3.1).
    """
    tiles_json, detections_json, out_json = Path(tiles_json), Path(detections_json), Path(out_json)
    outputs = OutputSet([tiles_json, detections_json], files=[out_json])
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    if not tiles_json.is_file():
        raise FileNotFoundError(f"tiles file not found: {tiles_json}")
    with open(tiles_json) as f:
        try:
            tiles = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{tiles_json} is not valid JSON: {e}") from e
    for key in ("slides", "images", "tiling"):
        if key not in tiles:
            raise KeyError(
                f"{tiles_json}: missing key '{key}' (not written by `sparse-ext convert tile`?)"
            )
    dets = _load_detections(detections_json)
    timgs = tiles["images"]
    for i, t in enumerate(timgs):
        for key in ("id", "slide_id", "x0", "y0", "width", "height"):
            if key not in t:
                raise KeyError(f"{tiles_json}: images[{i}] has no key '{key}'")
    tile_ids = np.array([t["id"] for t in timgs], np.int64)
    meta = np.array(
        [[t["slide_id"], t["x0"], t["y0"], t["width"], t["height"]] for t in timgs], np.int64
    )
    slides = {s["id"]: s for s in tiles["slides"]}
    tile_size, overlap = int(tiles["tiling"]["tile"]), int(tiles["tiling"]["overlap"])
    n_in = len(dets)
    if n_in == 0:
        with outputs:
            outputs.write_json(out_json, [])
        return Summary("merge", images=len(slides), outputs=[str(out_json)]).report(verbose)
    det_tile = np.array([d["image_id"] for d in dets], np.int64)
    order = np.argsort(tile_ids)
    pos = np.searchsorted(tile_ids, det_tile, sorter=order)
    pos = order[np.minimum(pos, len(order) - 1)]
    unknown = tile_ids[pos] != det_tile
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise KeyError(
            f"{detections_json}: detection {i} has image_id {det_tile[i]}, not a tile of {tiles_json}"
        )
    try:
        b = np.array([d["bbox"] for d in dets], np.float64).reshape(n_in, 4)
    except ValueError as e:
        raise ValueError(f"{detections_json}: every bbox must be 4 numbers ({e})") from e
    scores = np.array([d.get("score", 1.0) for d in dets], np.float64)
    cats = np.array([d["category_id"] for d in dets], np.int64)
    slide, ox, oy, tw, th = meta[pos].T
    x0, y0 = b[:, 0] + ox, b[:, 1] + oy
    x1, y1 = x0 + b[:, 2], y0 + b[:, 3]
    keep = scores >= score_threshold
    if edge_margin is not None:
        keep &= ~_cut_by_inner_edge(
            x0, x1, ox, tw, slide, slides, "width", tile_size, overlap, edge_margin
        )
        keep &= ~_cut_by_inner_edge(
            y0, y1, oy, th, slide, slides, "height", tile_size, overlap, edge_margin
        )
    idx = np.flatnonzero(keep)
    boxes = np.stack([x0, y0, x1, y1], 1)[idx]
    groups = slide[idx] * (int(cats.max()) + 1) + cats[idx]
    kept = idx[_batched_nms(boxes, scores[idx], groups, iou_threshold)] if len(idx) else idx
    kept = kept[np.lexsort((-scores[kept], slide[kept]))]
    results = [
        {
            "image_id": int(slide[k]),
            "file_name": slides[int(slide[k])]["file_name"],
            "category_id": int(cats[k]),
            "bbox": [float(x0[k]), float(y0[k]), float(x1[k] - x0[k]), float(y1[k] - y0[k])],
            "score": float(scores[k]),
        }
        for k in kept
    ]
    with outputs:
        outputs.write_json(out_json, results)
    return Summary(
        "merge",
        images=len(slides),
        kept=len(results),
        dropped=n_in - len(results),
        outputs=[str(out_json)],
        extra={
            "removed at inner tile edges": int((~keep).sum() - (scores < score_threshold).sum())
        },
    ).report(verbose)


def _cut_by_inner_edge(lo, hi, origin, size, slide, slides, dim, tile, overlap, margin):
    """Detections touching a tile edge shared with a neighbour and lying inside that neighbour."""
    cut = np.zeros(len(lo), bool)
    for sid in np.unique(slide):
        sel = slide == sid
        extent = int(slides[int(sid)][dim])
        grid = grid_origins(extent, tile, overlap)
        j = np.searchsorted(grid, origin[sel])
        has_prev, has_next = j > 0, j < len(grid) - 1
        prev_end = grid[np.maximum(j - 1, 0)] + min(tile, extent)
        next_start = grid[np.minimum(j + 1, len(grid) - 1)]
        near_lo = lo[sel] <= origin[sel] + margin
        near_hi = hi[sel] >= origin[sel] + size[sel] - margin
        cut[sel] = (has_prev & near_lo & (hi[sel] <= prev_end)) | (
            has_next & near_hi & (lo[sel] >= next_start)
        )
    return cut
