"""One annotation per image patch (``one-per-patch``), the incomplete-annotation protocol of Zhao,
Pang, Liu, Ye, "Positive-unlabeled learning for cell detection in histopathology images with
incomplete annotations", MICCAI 2021.

Zhao, Pang et al., MICCAI 2021, Sec. 3.1: images are cropped "into 500x500 patches with an overlap
of 100 pixels horizontally and vertically between adjacent patches ... we randomly deleted the
annotations until there was only one annotation per image patch".

An annotation belongs to every patch that contains its box centre; with overlapping patches it can
belong to up to four. Deletion is made well defined as a greedy, seeded selection: every annotation
draws a random priority; repeatedly, among the patches that hold no kept annotation yet, the one with
the fewest still-selectable annotations is served first and keeps its selectable annotation of
lowest priority. An annotation is selectable while none of its patches holds a kept one, so no
patch ever ends with two. A patch can end empty only when each of its annotations also lies in a
neighbouring patch already served by another annotation (overlap bands); the summary counts them.
"""

from __future__ import annotations

import heapq
from pathlib import Path

import numpy as np

from sparse_ext.data.io import OutputSet, PathLike, Summary, gc_paused, load_coco_text, progress

__all__ = [
    "grid_origins",
    "grid_pairs",
    "one_per_patch",
    "patch_membership",
    "select_one_per_patch",
]


def grid_origins(size: int, patch: int, overlap: int) -> np.ndarray:
    """Start offsets of patches of length ``patch`` covering ``[0, size)`` with at least ``overlap``
    between neighbours; the last patch ends at ``size`` (a single patch when ``size <= patch``)."""
    if patch <= 0 or overlap < 0 or overlap >= patch:
        raise ValueError(f"need patch > 0 and 0 <= overlap < patch, got {patch=} {overlap=}")
    if size <= patch:
        return np.zeros(1, np.int64)
    stride = patch - overlap
    origins = np.arange(0, size - patch, stride, dtype=np.int64)
    return np.append(origins, size - patch)


def grid_pairs(
    lo_x: np.ndarray, hi_x: np.ndarray, lo_y: np.ndarray, hi_y: np.ndarray, nx: int
) -> tuple[np.ndarray, np.ndarray]:
    """Expand per-item index ranges ``[lo_x, hi_x) x [lo_y, hi_y)`` of a row-major grid with
    ``nx`` columns into (item, cell) pairs, without a Python loop."""
    wx = np.maximum(hi_x - lo_x, 0)
    total = wx * np.maximum(hi_y - lo_y, 0)
    item = np.repeat(np.arange(len(total)), total)
    local = np.arange(int(total.sum())) - np.repeat(np.cumsum(total) - total, total)
    ix = lo_x[item] + local % wx[item]
    iy = lo_y[item] + local // wx[item]
    return item, iy * nx + ix


def patch_membership(
    centres: np.ndarray, width: int, height: int, patch: int, overlap: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """(annotation, patch) pairs for the patches (row-major) containing each box centre, and the
    number of patches. A centre lies in at most 2 x 2 patches."""
    xs, ys = grid_origins(width, patch, overlap), grid_origins(height, patch, overlap)
    cx = np.minimum(centres[:, 0], width - 1e-9)
    cy = np.minimum(centres[:, 1], height - 1e-9)
    # patch j contains c  <=>  xs[j] <= c < xs[j] + patch
    lo_x, hi_x = np.searchsorted(xs, cx - patch, "right"), np.searchsorted(xs, cx, "right")
    lo_y, hi_y = np.searchsorted(ys, cy - patch, "right"), np.searchsorted(ys, cy, "right")
    ann, cell = grid_pairs(lo_x, hi_x, lo_y, hi_y, len(xs))
    return ann, cell, len(xs) * len(ys)


def _csr(keys: np.ndarray, values: np.ndarray, n: int, sort_by: np.ndarray | None = None):
    order = np.lexsort((sort_by, keys)) if sort_by is not None else np.argsort(keys, kind="stable")
    return values[order], np.searchsorted(keys[order], np.arange(n + 1))


def select_one_per_patch(
    ann: np.ndarray, cell: np.ndarray, n_ann: int, n_patch: int, priority: np.ndarray
) -> np.ndarray:
    """Greedy selection described in the module docstring on (annotation, patch) pairs; returns a
    bool keep-mask over annotations. One step per served patch, most constrained patch first (a
    heap keyed by the number of selectable annotations), bookkeeping vectorised per step."""
    patch_anns, patch_ptr = _csr(cell, ann, n_patch, sort_by=priority[ann])
    ann_patches, ann_ptr = _csr(ann, cell, n_ann)
    counts = np.diff(patch_ptr).astype(np.int64)
    keep = np.zeros(n_ann, bool)
    blocked = np.zeros(n_ann, bool)
    served = np.zeros(n_patch, bool)
    heap = [(int(c), int(p)) for p, c in enumerate(counts) if c > 0]
    heapq.heapify(heap)
    while heap:
        c, p = heapq.heappop(heap)
        if served[p] or c != counts[p] or c == 0:
            continue  # stale entry
        cand = patch_anns[patch_ptr[p] : patch_ptr[p + 1]]
        a = cand[~blocked[cand]][0]  # lowest priority: the lists are sorted by priority
        keep[a] = True
        own = ann_patches[ann_ptr[a] : ann_ptr[a + 1]]
        served[own] = True
        near = np.concatenate([patch_anns[patch_ptr[q] : patch_ptr[q + 1]] for q in own])
        near = np.unique(near[~blocked[near]])
        blocked[near] = True
        touched = np.concatenate([ann_patches[ann_ptr[b] : ann_ptr[b + 1]] for b in near])
        np.subtract.at(counts, touched, 1)
        for q in np.unique(touched):
            if not served[q] and counts[q] > 0:
                heapq.heappush(heap, (int(counts[q]), int(q)))
    return keep


def one_per_patch(
    in_json: PathLike,
    out_json: PathLike,
    patch: int = 500,
    overlap: int = 100,
    seed: int = 0,
    *,
    verbose: bool = True,
) -> Summary:
    """Keep at most one annotation per ``patch`` x ``patch`` patch (overlap ``overlap``), at random
    with ``seed``; write the reduced COCO file (``info.sparse_protocol`` records the settings and
    ``info.sparse_fraction`` the fraction kept). See the module docstring for the exact rule."""
    in_json, out_json = Path(in_json), Path(out_json)
    outputs = OutputSet([in_json], files=[out_json])
    grid_origins(patch + 1, patch, overlap)  # validates patch/overlap before any work
    with gc_paused():
        coco = load_coco_text(in_json)
    arr = coco.arrays
    images = coco.head["images"]
    centres = arr.bboxes[:, :2] + arr.bboxes[:, 2:] / 2
    priority = np.random.default_rng(seed).permutation(len(arr.ann_ids))
    keep = np.zeros(len(arr.ann_ids), bool)
    order = np.argsort(arr.image_ids, kind="stable")
    sorted_ids = arr.image_ids[order]
    stats = {"patches": 0, "patches with one": 0, "patches left empty": 0}
    with progress(images, "one-per-patch", total=len(images), verbose=verbose, unit="image") as bar:
        for im in bar:
            lo, hi = np.searchsorted(sorted_ids, [im["id"], im["id"] + 1])
            sel = order[lo:hi]
            ann, cell, n_patch = patch_membership(
                centres[sel], im["width"], im["height"], patch, overlap
            )
            stats["patches"] += n_patch
            if len(sel):
                k = select_one_per_patch(ann, cell, len(sel), n_patch, priority[sel])
                keep[sel[k]] = True
                held = np.bincount(cell[k[ann]], minlength=n_patch)
                has_any = np.bincount(cell, minlength=n_patch) > 0
                stats["patches with one"] += int((held == 1).sum())
                stats["patches left empty"] += int(((held == 0) & has_any).sum())
    n = len(keep)
    info = dict(coco.head.get("info") or {})
    info.update(
        sparse_fraction=float(keep.sum() / n) if n else 0.0,
        sparse_protocol={"name": "one_per_patch", "patch": patch, "overlap": overlap, "seed": seed},
        sparse_source=in_json.name,
    )
    with outputs:
        coco.write_subset(outputs.path(out_json), np.flatnonzero(keep), {**coco.head, "info": info})
    return Summary(
        "one-per-patch",
        images=len(images),
        kept=int(keep.sum()),
        dropped=int(n - keep.sum()),
        outputs=[str(out_json)],
        extra=stats,
    ).report(verbose)
