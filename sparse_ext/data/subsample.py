"""Nested sparse variants of an exhaustive COCO file (``subsample``), and matching sparse label maps.

Protocol of Panteli, Teuwen et al., ICCV 2021, Sec. 4: annotations are removed at random to keep
10 %, 20 %, ..., 90 % of them, and every annotation of a smaller variant is also in every larger one.
Here each annotation draws one random priority (a single permutation for the given seed); the
variant at fraction f keeps the ``k = round(n * f / 100)`` annotations of lowest priority, counted
over the whole file (global) or per image (``per_image``). Nesting and exact counts follow from
the fixed priority; the selection is a sort, so millions of annotations take a fraction of a second.
The annotations' JSON texts are sliced from the input as it is parsed (:func:`load_coco_text`) and
each variant file joins the texts of its annotations: nothing is decoded or encoded twice, so nine
variants of a million annotations are written in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from sparse_ext.data.io import (
    CocoText,
    OutputSet,
    PathLike,
    Summary,
    gc_paused,
    list_images,
    load_coco_text,
    progress,
    read_image,
)

__all__ = [
    "DEFAULT_FRACTIONS",
    "exact_count",
    "nested_fractions",
    "sparse_label_map",
    "subsample_coco",
]

DEFAULT_FRACTIONS = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def exact_count(n: np.ndarray | int, fraction: int) -> np.ndarray:
    """``round(n * fraction / 100)`` in exact integer arithmetic (ties to even, as Python's round)."""
    q, r = np.divmod(np.asarray(n, dtype=np.int64) * int(fraction), 100)
    return q + ((2 * r > 100) | ((2 * r == 100) & (q % 2 == 1)))


def _check_fractions(fractions: Sequence[float]) -> Tuple[int, ...]:
    out = []
    for f in fractions:
        if isinstance(f, bool) or not float(f).is_integer() or not 0 < float(f) <= 100:
            raise ValueError(f"fractions must be whole percentages in 1..100, got {f!r}")
        out.append(int(f))
    if not out:
        raise ValueError("no fractions given")
    return tuple(sorted(set(out)))


def nested_fractions(
    image_ids: np.ndarray,
    fractions: Sequence[int] = DEFAULT_FRACTIONS,
    seed: int = 0,
    *,
    per_image: bool = False,
) -> np.ndarray:
    """For each annotation, the smallest fraction (percent) whose variant keeps it, else 101.

    The variant at fraction f is ``result <= f``; this is nested by construction. Global: exactly
    ``round(n f / 100)`` kept; per image: exactly ``round(n_i f / 100)`` of each image's ``n_i``.
    """
    fractions = _check_fractions(fractions)
    image_ids = np.asarray(image_ids)
    n = len(image_ids)
    priority = np.random.default_rng(seed).permutation(n)
    if per_image:
        order = np.lexsort((priority, image_ids))  # by image, then priority
        sorted_img = image_ids[order]
        starts = np.flatnonzero(np.r_[True, sorted_img[1:] != sorted_img[:-1]])
        sizes = np.diff(np.r_[starts, n])
        group = np.repeat(np.arange(len(starts)), sizes)
        rank_sorted = np.arange(n) - starts[group]
        rank = np.empty(n, np.int64)
        rank[order] = rank_sorted
        group_size = np.empty(n, np.int64)
        group_size[order] = sizes[group]
    else:
        rank = priority.astype(np.int64)
        group_size = np.int64(n)  # one group: a scalar count, not an array of n copies
    result = np.full(n, 101, np.int64)
    for f in sorted(fractions, reverse=True):  # a few fractions, each a vector op
        result[rank < exact_count(group_size, f)] = f
    return result


def sparse_label_map(
    instances: np.ndarray, kept_instance_ids: np.ndarray, kept_classes: np.ndarray | int = 1
) -> np.ndarray:
    """Class map (uint8) with ``kept_classes`` on the kept instances and 0 elsewhere: 0 means
    background OR unannotated, as the sparse losses expect."""
    kept_instance_ids = np.asarray(kept_instance_ids)
    classes = np.broadcast_to(np.asarray(kept_classes), kept_instance_ids.shape)
    ids, inverse = np.unique(instances, return_inverse=True)
    cls = np.zeros(len(ids), np.uint8)
    pos = np.searchsorted(ids, kept_instance_ids)
    found = (pos < len(ids)) & (ids[np.minimum(pos, len(ids) - 1)] == kept_instance_ids)
    cls[pos[found]] = classes[found]
    cls[ids == 0] = 0
    return cls[inverse.reshape(instances.shape)]


def _labels_folder(labels_dir: str, frac: int) -> Path:
    tag = f"{frac:03d}"
    if "{frac}" in labels_dir:
        return Path(labels_dir.replace("{frac}", tag))
    return Path(labels_dir) / f"frac{tag}"


def subsample_coco(
    in_json: PathLike,
    out_dir: PathLike,
    fractions: Sequence[int] = DEFAULT_FRACTIONS,
    seed: int = 0,
    *,
    per_image: bool = False,
    instances_dir: Optional[PathLike] = None,
    labels_dir: Optional[str] = None,
    verbose: bool = True,
) -> Summary:
    """Write ``out_dir/<in_stem>_frac<NNN>.json`` for each fraction (NNN = 3-digit percent).

    Each file is the input with only the kept annotations (same images, categories, ids) and
    ``info`` extended with ``sparse_fraction`` (f / 100), ``sparse_seed``, ``sparse_per_image``,
    ``sparse_source`` and ``sparse_kept``/``sparse_total``, written as compact JSON; each kept
    annotation's JSON text is copied verbatim from the input (see :class:`CocoText`).

    With ``instances_dir`` (instance maps ``<image stem>.tif/png``, the ones the annotations'
    ``instance_id`` refer to, as written by :func:`masks_to_coco`) and ``labels_dir``, also writes
    the matching sparse label maps ``<labels_dir>/frac<NNN>/<stem>.png`` (or ``labels_dir`` with
    ``{frac}`` replaced by NNN): kept instances carry their category id, everything else is 0.

    Nothing is written unless every file could be made (see :class:`OutputSet`); no output may
    replace ``in_json`` or lie in ``instances_dir``.

    Raises:
        FileNotFoundError/KeyError/ValueError: missing or malformed input (offending key named),
        fractions outside 1..100, annotations without ``instance_id`` when label maps are asked,
        an output that would replace or lie among the inputs.
    """
    in_json, out_dir = Path(in_json), Path(out_dir)
    fractions = _check_fractions(fractions)
    if (instances_dir is None) != (labels_dir is None):
        raise ValueError("sparse label maps need both instances_dir and labels_dir")
    json_paths = {f: out_dir / f"{in_json.stem}_frac{f:03d}.json" for f in fractions}
    label_folders = (
        [_labels_folder(labels_dir, f) for f in fractions] if labels_dir is not None else []
    )
    outputs = OutputSet([in_json, instances_dir], files=json_paths.values(), folders=label_folders)
    with gc_paused(), outputs:  # gc_paused: a million annotations, see there
        coco = load_coco_text(in_json)
        arr = coco.arrays
        level = nested_fractions(arr.image_ids, fractions, seed, per_image=per_image)
        n = len(coco)
        for f in fractions:
            keep = np.flatnonzero(level <= f)
            info = dict(coco.head.get("info") or {})
            info.update(
                sparse_fraction=f / 100,
                sparse_seed=int(seed),
                sparse_per_image=bool(per_image),
                sparse_source=in_json.name,
                sparse_kept=int(len(keep)),
                sparse_total=int(n),
            )
            coco.write_subset(outputs.path(json_paths[f]), keep, {**coco.head, "info": info})
        if instances_dir is not None:
            _write_label_maps(
                outputs, coco, level, fractions, Path(instances_dir), labels_dir, verbose
            )
    kept = {f: int((level <= f).sum()) for f in fractions}
    return Summary(
        "subsample",
        images=len(coco.head["images"]),
        kept=kept[fractions[0]],
        dropped=n - kept[fractions[0]],
        outputs=outputs.committed,
        extra={"kept per fraction": ", ".join(f"{f}%: {k}/{n}" for f, k in kept.items())},
    ).report(verbose)


def _write_label_maps(
    outputs: OutputSet,
    coco: CocoText,
    level: np.ndarray,
    fractions: Sequence[int],
    instances_dir: Path,
    labels_dir: str,
    verbose: bool,
) -> None:
    arr = coco.arrays
    missing = [i for i, v in enumerate(coco.instance_ids) if v is None]
    if missing:
        i = missing[0]
        raise KeyError(
            f"annotations[{i}] (id={int(arr.ann_ids[i])}) has no key 'instance_id': sparse label "
            f"maps need the instance id each annotation came from (masks_to_coco writes it)"
        )
    inst_ids = np.fromiter(coco.instance_ids, np.int64, len(coco))
    images = coco.head["images"]
    instance_files = list_images(instances_dir, "instance map")
    order = np.argsort(arr.image_ids, kind="stable")
    starts = np.searchsorted(arr.image_ids[order], [im["id"] for im in images], "left")
    ends = np.searchsorted(arr.image_ids[order], [im["id"] for im in images], "right")
    with progress(
        zip(images, starts, ends),
        "subsample label maps",
        total=len(images),
        verbose=verbose,
        unit="image",
    ) as bar:
        for im, s, e in bar:
            stem = Path(im["file_name"]).stem
            if stem not in instance_files:
                raise FileNotFoundError(f"no instance map for image '{stem}' in {instances_dir}")
            inst = read_image(instance_files[stem])
            if inst.shape[:2] != (im["height"], im["width"]):
                raise ValueError(
                    f"size mismatch: instance map {instance_files[stem]} has shape {inst.shape}, image "
                    f"'{stem}' is {im['width']}x{im['height']} (width x height)"
                )
            sel = order[s:e]
            if len(sel) and arr.category_ids[sel].max() > 255:
                raise ValueError("category ids above 255 do not fit a uint8 label map")
            for f in fractions:
                k = sel[level[sel] <= f]
                label = sparse_label_map(inst, inst_ids[k], arr.category_ids[k])
                outputs.write_image(_labels_folder(labels_dir, f) / f"{stem}.png", label)
