"""Image blocks, low-resolution block labels and the joint-distribution table for label
super-resolution (``lsr-blocks``).

Zhao, Hou et al., "Label super resolution with inter-instance loss", arXiv 2019: images are cut into
blocks (240 x 240 in the paper), each block gets a low-resolution label z (there: a classifier
probability quantised into 10 bins), and training needs, for each high-resolution class l and label z,
the mean ``eta[l][z]`` and standard deviation ``rho[l][z]`` of the fraction of class-l pixels over the
blocks with label z. Appendix B.2 "mask estimation": the fractions are computed from drawn masks of
the blocks; Appendix B.1 "visual approximation": an expert estimates them (read here from a CSV).

Output layout (read by the MMSeg ``LSRBlockDataset`` and ``load_lsr_table``)::

    OUT/blocks/<stem>_r<row>_c<col>.png   image blocks (row/col = block indices in the image)
    OUT/masks/<stem>_r<row>_c<col>.png    high-res class mask blocks (evaluation only; with masks)
    OUT/block_labels.csv                  "block,z" or "block,z_<class>,..." (per-class labels)
    OUT/table.json                        {"classes", "labels", "eta", "rho", "counts", "notes", ...}
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sparse_ext.data.io import OutputSet, PathLike, Summary, list_images, progress, read_image

__all__ = [
    "block_fractions",
    "make_lsr_blocks",
    "quantise_fraction",
    "read_block_labels",
    "read_table_csv",
]


def quantise_fraction(counts: np.ndarray, n_pixels: int, bins: int) -> np.ndarray:
    """Low-res label ``z = min(floor(fraction * bins), bins - 1)`` in exact integer arithmetic
    (``fraction = counts / n_pixels``)."""
    return np.minimum(np.asarray(counts, np.int64) * bins // n_pixels, bins - 1)


def block_fractions(
    mask: np.ndarray, n_classes: int, block: int, stride: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Per-block pixel counts of each class: (rows, cols, n_classes) int64, and the block grid's
    (rows, cols)."""
    view = np.lib.stride_tricks.sliding_window_view(mask, (block, block))[::stride, ::stride]
    counts = np.stack([(view == c).sum(axis=(2, 3)) for c in range(n_classes)], axis=-1)
    return counts.astype(np.int64), np.array(view.shape[:2])


def read_table_csv(
    path: PathLike, classes: Sequence[str], bins: int
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Visual estimates ``class,z,eta,rho`` (class by name or index) -> (eta, rho, given) L x Z;
    ``given`` marks the cells the file defines."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"table CSV not found: {path}")
    L = len(classes)
    eta, rho = np.zeros((L, bins)), np.zeros((L, bins))
    given = np.zeros((L, bins), bool)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        for key in ("class", "z", "eta", "rho"):
            if key not in fields:
                raise KeyError(f"{path}: missing column '{key}' (header must be class,z,eta,rho)")
        for i, row in enumerate(reader, start=2):
            name = row["class"].strip()
            if name in classes:
                ci = list(classes).index(name)
            elif name.isdigit() and int(name) < L:
                ci = int(name)
            else:
                raise ValueError(f"{path}:{i}: unknown class '{name}' (classes: {list(classes)})")
            try:
                z, e, r = int(row["z"]), float(row["eta"]), float(row["rho"])
            except ValueError as err:
                raise ValueError(
                    f"{path}:{i}: z must be an integer, eta/rho numbers ({err})"
                ) from err
            if not 0 <= z < bins:
                raise ValueError(f"{path}:{i}: z={z} outside 0..{bins - 1}")
            if not (0.0 <= e <= 1.0 and r >= 0.0 and math.isfinite(r)):
                raise ValueError(f"{path}:{i}: need 0 <= eta <= 1 and rho >= 0, got {e}, {r}")
            if given[ci, z]:
                raise ValueError(f"{path}:{i}: duplicate entry for class '{classes[ci]}', z={z}")
            eta[ci, z], rho[ci, z], given[ci, z] = e, r, True
    return eta, rho, given


def read_block_labels(
    path: PathLike,
    classes: Sequence[str],
    num_labels: int,
    suffix: str = ".png",
    table: Optional[PathLike] = None,
) -> Dict[str, Tuple[int, ...]]:
    """``block_labels.csv`` -> {block name without ``suffix``: one label per class, in the order
    of ``classes``}. A "block,z" file gives every class the block's z; "block,z_<class>,..."
    names one column per class.

    Raises FileNotFoundError (no file), ValueError (a malformed header or row, per-class columns
    that are not the classes, non-integer labels, a block listed twice, no block) or KeyError (a
    label outside 0..num_labels-1, i.e. missing from the table; ``table`` names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"block label file not found: {path}")
    classes = list(classes)
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if not header or header[0] != "block" or len(header) < 2:
            raise ValueError(f"{path}: header must be 'block,z' or 'block,z_<class>,...'")
        if header[1:] == ["z"]:
            columns = None
        else:
            named = [h[2:] for h in header[1:] if h.startswith("z_")]
            if len(named) != len(header) - 1 or sorted(named) != sorted(classes):
                raise ValueError(
                    f"{path}: per-class columns {header[1:]} must be z_<class> for each "
                    f"table class {classes}"
                )
            columns = [named.index(c) for c in classes]
        labels: Dict[str, Tuple[int, ...]] = {}
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}:{line}: {len(row)} fields, header has {len(header)}")
            name = row[0].strip()
            if suffix and name.endswith(suffix):
                name = name[: -len(suffix)]
            try:
                values = [int(v) for v in row[1:]]
            except ValueError as err:
                raise ValueError(f"{path}:{line}: block labels must be integers") from err
            bad = [v for v in values if not 0 <= v < num_labels]
            if bad:
                raise KeyError(
                    f"{path}:{line}: block {name!r} has label(s) {bad} missing from the "
                    f"table{'' if table is None else f' {table}'} (labels 0..{num_labels - 1})"
                )
            if name in labels:
                raise ValueError(f"{path}:{line}: block {name!r} listed twice")
            z = values * len(classes) if columns is None else [values[i] for i in columns]
            labels[name] = tuple(z)
    if not labels:
        raise ValueError(f"{path}: no blocks listed")
    return labels


def _low_res_labels(path: Path, grid: np.ndarray, block: int, stride: int, bins: int) -> np.ndarray:
    low = read_image(path)
    if low.ndim == 3 and low.shape[-1] == 1:
        low = low[..., 0]
    if tuple(low.shape) == tuple(grid):
        z = low.astype(np.int64)
    elif low.ndim == 2 and low.shape[0] >= block and low.shape[1] >= block:
        # full-resolution map: the most frequent value in each block
        view = np.lib.stride_tricks.sliding_window_view(low, (block, block))[::stride, ::stride]
        if tuple(view.shape[:2]) != tuple(grid):
            raise ValueError(f"low-res map {path} has shape {low.shape}, not the image's")
        flat = view.reshape(*view.shape[:2], -1).astype(np.int64)
        if flat.min() < 0:
            raise ValueError(f"low-res map {path} holds negative labels")
        top = int(flat.max()) + 1
        hist = np.stack([(flat == v).sum(-1) for v in range(top)], -1)
        z = hist.argmax(-1)
    else:
        raise ValueError(
            f"low-res map {path} has shape {low.shape}: expected the block grid {tuple(grid)} "
            f"or the image size"
        )
    if z.min() < 0 or z.max() >= bins:
        raise ValueError(f"low-res map {path} holds labels outside 0..{bins - 1}")
    return z


def make_lsr_blocks(
    images_dir: PathLike,
    masks_dir: Optional[PathLike],
    out_dir: PathLike,
    block: int = 240,
    bins: int = 10,
    *,
    classes: Sequence[str] = ("background", "nucleus"),
    quantise_class: int = 1,
    per_class: bool = False,
    low_res_dir: Optional[PathLike] = None,
    table_csv: Optional[PathLike] = None,
    stride: Optional[int] = None,
    default_std: Optional[float] = None,
    verbose: bool = True,
) -> Summary:
    """Cut images into ``block`` x ``block`` blocks (step ``stride``, default ``block``; the
    remainder at the right/bottom edge is not used), label them and build the (eta, rho) table.

    Block labels: from ``low_res_dir`` (``<stem>.png/.tif`` per image, either one value per block,
    shape = block grid, or a full-resolution map whose most frequent value per block is taken), else
    by quantising the fraction of class ``quantise_class`` in each mask block into ``bins`` bins,
    ``z = min(floor(fraction * bins), bins - 1)``; with ``per_class`` every class gets its own label
    ``z_<class>`` from its own fraction (the table's row l is then indexed by ``z_<class l>``).

    Table: from ``table_csv`` (visual estimates ``class,z,eta,rho``) when given, else by mask
    estimation (needs ``masks_dir``: class maps with values 0..L-1): ``eta[l][z]`` and ``rho[l][z]``
    are the mean and population standard deviation (ddof 0) of the class-l fraction over the blocks
    with label z; a cell with one block only takes ``default_std`` as its rho (one block has no
    spread, and rho = 0 makes the interval distance's denominator vanish). A (class, z) cell with
    no block falls back to the bin centre ``(z + 0.5) / bins``
    for the quantised class (the remainder ``1 - centre`` shared evenly by the other classes in
    single-label mode) and ``default_std`` (default ``1 / (bins * sqrt(12))``, the standard deviation
    of a uniform fraction within one bin); ``notes`` in table.json lists those cells.

    Raises:
        FileNotFoundError / ValueError: missing folders or files, size mismatches, mask values
        outside 0..L-1, labels outside 0..bins-1, a CSV that lacks a (class, z) some block uses,
        neither masks nor a table CSV.
    """
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    stride = block if stride is None else int(stride)
    if block <= 0 or stride <= 0 or bins < 1:
        raise ValueError(
            f"need block > 0, stride > 0 and bins >= 1, got {block=} {stride=} {bins=}"
        )
    classes = list(classes)
    L = len(classes)
    if L < 2:
        raise ValueError(f"need at least two high-res classes, got {classes}")
    if not 0 <= quantise_class < L:
        raise ValueError(f"quantise_class {quantise_class} is not a class index of {classes}")
    if masks_dir is None and table_csv is None:
        raise ValueError("need masks_dir (mask estimation) or table_csv (visual estimates)")
    if masks_dir is None and low_res_dir is None:
        raise ValueError("without masks the block labels must come from low_res_dir")
    if per_class and low_res_dir is not None:
        raise ValueError(
            "per_class labels are computed from masks; do not combine with low_res_dir"
        )
    outputs = OutputSet(
        [images_dir, masks_dir, low_res_dir, table_csv],
        files=[out_dir / "block_labels.csv", out_dir / "table.json"],
        folders=[out_dir / "blocks"] + ([out_dir / "masks"] if masks_dir is not None else []),
    )
    images = list_images(images_dir, "image")
    masks = list_images(masks_dir, "mask") if masks_dir is not None else None
    lows = list_images(low_res_dir, "low-res map") if low_res_dir is not None else None
    for what, found in (("mask", masks), ("low-res map", lows)):
        if found is not None:
            missing = sorted(set(images) - set(found))
            if missing:
                raise ValueError(f"images without a {what}: {missing[:10]}")
    default_std = 1.0 / (bins * math.sqrt(12.0)) if default_std is None else float(default_std)

    with outputs:
        names, z_all, frac_all, skipped = _cut_blocks(
            outputs,
            images,
            masks,
            lows,
            out_dir,
            block,
            stride,
            bins,
            classes,
            quantise_class,
            per_class,
            verbose,
        )
        if not names:
            raise ValueError(f"no image in {images_dir} is at least {block}x{block} pixels")
        header = ["block", "z"] if z_all.shape[1] == 1 else ["block"] + [f"z_{c}" for c in classes]
        rows = [[n, *map(int, zz)] for n, zz in zip(names, z_all)]
        outputs.write_csv(out_dir / "block_labels.csv", header, rows)
        table = _build_table(
            z_all, frac_all, classes, bins, quantise_class, per_class, table_csv, default_std
        )
        table.update(block=block, stride=stride, bins=bins, label_columns=header[1:])
        outputs.write_json(out_dir / "table.json", table, indent=1)
    hist = np.bincount(z_all[:, 0 if z_all.shape[1] == 1 else quantise_class], minlength=bins)
    return Summary(
        "lsr-blocks",
        images=len(images) - skipped,
        kept=len(names),
        dropped=0,
        outputs=[str(out_dir / "table.json"), str(out_dir / "block_labels.csv")],
        extra={"blocks per label": hist.tolist(), "images smaller than a block": skipped},
        unit="blocks",
    ).report(verbose)


def _cut_blocks(
    outputs: OutputSet,
    images: Dict[str, Path],
    masks: Optional[Dict[str, Path]],
    lows: Optional[Dict[str, Path]],
    out_dir: Path,
    block: int,
    stride: int,
    bins: int,
    classes: List[str],
    quantise_class: int,
    per_class: bool,
    verbose: bool,
) -> Tuple[List[str], np.ndarray, Optional[np.ndarray], int]:
    """Stage the block (and mask block) files; return block names, labels (N, 1) or (N, L),
    class fractions (N, L) (None without masks) and the number of images smaller than a block."""
    L = len(classes)
    names: List[str] = []
    labels: List[np.ndarray] = []  # (n_label_columns,) per block
    fractions: List[np.ndarray] = []  # (L,) per block
    skipped = 0
    npix = block * block
    with progress(
        images.items(), "lsr-blocks", total=len(images), verbose=verbose, unit="image"
    ) as bar:
        for stem, path in bar:
            img = read_image(path)
            h, w = img.shape[:2]
            if h < block or w < block:
                skipped += 1
                continue
            mask = None
            if masks is not None:
                mask = read_image(masks[stem])
                if mask.shape[:2] != (h, w) or mask.ndim != 2:
                    raise ValueError(
                        f"size mismatch: mask {masks[stem]} has shape {mask.shape}, image {path} "
                        f"has shape {img.shape}"
                    )
                if mask.min() < 0 or mask.max() >= L:
                    raise ValueError(
                        f"mask {masks[stem]} holds values outside 0..{L - 1} (classes {classes}); "
                        f"instance maps must be turned into class maps first"
                    )
            grid = np.array([(h - block) // stride + 1, (w - block) // stride + 1])
            if mask is not None:
                counts, _ = block_fractions(mask, L, block, stride)
                frac = counts / npix
            if lows is not None:
                z = _low_res_labels(lows[stem], grid, block, stride, bins)[..., None]
            elif per_class:
                z = quantise_fraction(counts, npix, bins)
            else:
                z = quantise_fraction(counts[..., quantise_class], npix, bins)[..., None]
            for r in range(grid[0]):
                for c in range(grid[1]):
                    name = f"{stem}_r{r}_c{c}.png"
                    y, x = r * stride, c * stride
                    outputs.write_image(
                        out_dir / "blocks" / name, img[y : y + block, x : x + block]
                    )
                    if mask is not None:
                        outputs.write_image(
                            out_dir / "masks" / name,
                            mask[y : y + block, x : x + block].astype(np.uint8),
                        )
                        fractions.append(frac[r, c])
                    names.append(name)
                    labels.append(z[r, c])
    if not names:
        return names, np.zeros((0, 1), np.int64), None, skipped
    z_all = np.stack(labels).astype(np.int64)  # (N, 1) or (N, L)
    return names, z_all, (np.stack(fractions) if fractions else None), skipped


def _build_table(
    z_all: np.ndarray,
    frac_all: Optional[np.ndarray],
    classes: List[str],
    bins: int,
    quantise_class: int,
    per_class: bool,
    table_csv: Optional[PathLike],
    default_std: float,
) -> Dict[str, Any]:
    L = len(classes)
    label_of = (lambda ci: z_all[:, ci]) if per_class else (lambda ci: z_all[:, 0])
    counts = np.array([np.bincount(label_of(ci), minlength=bins)[:bins] for ci in range(L)])
    centre = (np.arange(bins) + 0.5) / bins
    fallback_eta = np.empty((L, bins))
    for ci in range(L):
        if per_class or ci == quantise_class:
            fallback_eta[ci] = centre
        else:
            fallback_eta[ci] = (1.0 - centre) / (L - 1)
    notes: List[str] = []
    if table_csv is not None:
        eta, rho, given = read_table_csv(table_csv, classes, bins)
        lacking = [
            (classes[ci], z)
            for ci in range(L)
            for z in range(bins)
            if counts[ci, z] and not given[ci, z]
        ]
        if lacking:
            raise ValueError(f"{table_csv} lacks (class, z) entries used by blocks: {lacking[:10]}")
        source = f"visual estimates from {Path(table_csv).name}"
    else:
        assert frac_all is not None
        eta, rho = np.zeros((L, bins)), np.zeros((L, bins))
        given = counts > 0
        for ci in range(L):
            for z in range(bins):
                sel = label_of(ci) == z
                if sel.any():  # mask estimation (Zhao, Hou et al., 2019, Appendix B.2)
                    eta[ci, z] = frac_all[sel, ci].mean()
                    rho[ci, z] = frac_all[sel, ci].std()
        # one block gives no spread: rho = 0 would make the interval distance's denominator
        # 1e-6 + sigma2 and its gradient explode; the within-bin spread is used instead
        single = counts == 1
        rho = np.where(single, default_std, rho)
        if single.any():
            cells = [(classes[ci], int(z)) for ci, z in zip(*np.nonzero(single))]
            notes.append(
                f"one block only for (class, z) {cells}: rho = default_std {default_std:.6g}"
            )
        source = "mask estimation (Zhao, Hou et al., 2019, Appendix B.2)"
    missing = [(classes[ci], z) for ci in range(L) for z in range(bins) if not given[ci, z]]
    eta = np.where(given, eta, fallback_eta)
    rho = np.where(given, rho, default_std)
    if missing:
        notes.append(
            f"no block for (class, z) {missing}: eta = bin centre (z + 0.5) / {bins} "
            f"(other classes share the rest), rho = default_std {default_std:.6g}"
        )
    return {
        "classes": classes,
        "labels": list(range(bins)),
        "eta": eta.tolist(),
        "rho": rho.tolist(),
        "counts": counts.tolist(),
        "source": source,
        "notes": notes,
    }
