"""Reading, validating and atomically writing the files the converters exchange.

Every converter reads through these helpers (clear errors naming the file, key or value that is
wrong) and writes through them: an output is first written to a temporary file in the same folder,
then moved over the destination with :func:`os.replace`, so a reader never sees half a file and an
interrupted run leaves the previous output intact. Inputs are only ever opened for reading.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np

PathLike = Union[str, os.PathLike]

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
TIFF_EXTENSIONS = (".tif", ".tiff", ".svs", ".ndpi", ".btf")

__all__ = [
    "IMAGE_EXTENSIONS",
    "Progress",
    "Summary",
    "atomic_path",
    "coco_arrays",
    "list_images",
    "load_coco",
    "read_image",
    "validate_coco",
    "write_csv",
    "write_image",
    "write_json",
]


# -- atomic writes ------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success move it over ``path`` (os.replace).

    The temporary name keeps the destination's extension so that writers choosing the format from
    the suffix (image writers) still work. On error the temporary file is removed and ``path`` is
    left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: PathLike, obj: Any, *, indent: Optional[int] = None) -> None:
    """Write ``obj`` as JSON atomically (compact by default: COCO files can be large).

    ``json.dumps`` (one shot) uses CPython's C encoder; ``json.dump`` streams through the pure
    Python one and is several times slower on million-annotation files."""
    text = json.dumps(obj, indent=indent, separators=None if indent else (",", ":"))
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_csv(path: PathLike, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write a CSV file with ``header`` and ``rows`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_image(path: PathLike, array: np.ndarray) -> None:
    """Write an image atomically: TIFF via tifffile (zlib), anything else via scikit-image."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() in TIFF_EXTENSIONS:
            import tifffile

            tifffile.imwrite(tmp, array, compression="zlib")
        else:
            from skimage import io as skio

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                skio.imsave(tmp, array, check_contrast=False)


# -- reading --------------------------------------------------------------------------------------


def read_image(path: PathLike) -> np.ndarray:
    """Read a whole image (TIFF via tifffile, other formats via scikit-image).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be decoded as an image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        if path.suffix.lower() in TIFF_EXTENSIONS:
            import tifffile

            return tifffile.imread(path)
        from skimage import io as skio

        return skio.imread(path)
    except Exception as e:  # decoders raise many types; report one clear error
        raise ValueError(f"cannot read image {path}: {e}") from e


def list_images(folder: PathLike, what: str = "image") -> Dict[str, Path]:
    """Map file stem -> path for the image files directly inside ``folder`` (sorted by stem).

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
        ValueError: two files share a stem (e.g. ``a.png`` and ``a.tif``), which makes matching
            by stem ambiguous.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    found: Dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS:
            if p.stem in found:
                raise ValueError(
                    f"{what} folder {folder} holds two files with stem '{p.stem}': "
                    f"{found[p.stem].name} and {p.name}"
                )
            found[p.stem] = p
    return dict(sorted(found.items()))


def load_coco(path: PathLike, *, check_bounds: bool = True) -> Dict[str, Any]:
    """Load and validate a COCO detection/instance file (see :func:`validate_coco`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO file not found: {path}")
    with open(path) as f:
        try:
            coco = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
    validate_coco(coco, source=str(path), check_bounds=check_bounds)
    return coco


_IMAGE_KEYS = ("id", "width", "height", "file_name")


def _first_missing(records: Sequence[Mapping], keys: Sequence[str], where: str, source: str):
    for i, r in enumerate(records):
        if not isinstance(r, Mapping):
            raise ValueError(f"{source}: {where}[{i}] is not a JSON object")
        for k in keys:
            if k not in r:
                ident = f" (id={r['id']})" if "id" in r else ""
                raise KeyError(f"{source}: {where}[{i}]{ident} has no key '{k}'")


def validate_coco(coco: Any, *, source: str = "COCO", check_bounds: bool = True) -> None:
    """Check the structure a converter relies on; raise one clear error naming what is wrong.

    Checked: top-level ``images``/``annotations``/``categories`` lists; image keys
    ``id, width, height, file_name``; annotation keys ``id, image_id, category_id, bbox``; unique
    ids; every annotation's image and category exist; boxes are 4 finite numbers with non-negative
    width/height and (``check_bounds``) lie inside their image.
    """
    if not isinstance(coco, Mapping):
        raise ValueError(f"{source}: top level must be a JSON object")
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise KeyError(f"{source}: missing top-level key '{key}'")
        if not isinstance(coco[key], list):
            raise ValueError(f"{source}: '{key}' must be a list")
    _first_missing(coco["images"], _IMAGE_KEYS, "images", source)
    _first_missing(coco["categories"], ("id", "name"), "categories", source)
    images = coco["images"]
    img_ids = np.array([im["id"] for im in images], dtype=np.int64)
    if len(np.unique(img_ids)) != len(img_ids):
        raise ValueError(f"{source}: duplicate image ids")
    cat_ids = np.array([c["id"] for c in coco["categories"]], dtype=np.int64)
    arr = coco_arrays(coco, source=source)  # names the first annotation lacking a key
    if len(np.unique(arr.ann_ids)) != len(arr.ann_ids):
        raise ValueError(f"{source}: duplicate annotation ids")
    bad = ~np.isin(arr.image_ids, img_ids)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise KeyError(
            f"{source}: annotations[{i}] (id={int(arr.ann_ids[i])}) refers to image_id "
            f"{int(arr.image_ids[i])}, which is not in 'images'"
        )
    bad = ~np.isin(arr.category_ids, cat_ids)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise KeyError(
            f"{source}: annotations[{i}] (id={int(arr.ann_ids[i])}) refers to category_id "
            f"{int(arr.category_ids[i])}, which is not in 'categories'"
        )
    b = arr.bboxes
    bad = ~np.isfinite(b).all(1) | (b[:, 2] < 0) | (b[:, 3] < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{source}: annotations[{i}] (id={int(arr.ann_ids[i])}) has an invalid bbox "
            f"{b[i].tolist()} (need 4 finite numbers [x, y, w, h] with w, h >= 0)"
        )
    if check_bounds and len(b):
        order = np.argsort(img_ids)
        pos = order[np.searchsorted(img_ids, arr.image_ids, sorter=order)]
        wh = np.array([[im["width"], im["height"]] for im in images], dtype=np.float64)[pos]
        eps = 1e-6
        out = (
            (b[:, 0] < -eps)
            | (b[:, 1] < -eps)
            | (b[:, 0] + b[:, 2] > wh[:, 0] + eps)
            | (b[:, 1] + b[:, 3] > wh[:, 1] + eps)
        )
        if out.any():
            i = int(np.flatnonzero(out)[0])
            raise ValueError(
                f"{source}: annotations[{i}] (id={int(arr.ann_ids[i])}) bbox {b[i].tolist()} lies "
                f"outside its image {int(arr.image_ids[i])} of size "
                f"{int(wh[i, 0])}x{int(wh[i, 1])} (width x height)"
            )


@dataclass
class CocoArrays:
    """Column view of a COCO file's annotations (one row per annotation, input order)."""

    ann_ids: np.ndarray
    image_ids: np.ndarray
    category_ids: np.ndarray
    bboxes: np.ndarray  # (n, 4) float64 [x, y, w, h]


def coco_arrays(coco: Mapping[str, Any], *, source: str = "COCO") -> CocoArrays:
    """Columns of ``coco['annotations']`` as numpy arrays (KeyError naming a missing key)."""
    anns = coco["annotations"]
    try:
        ann_ids = np.fromiter((a["id"] for a in anns), np.int64, len(anns))
        image_ids = np.fromiter((a["image_id"] for a in anns), np.int64, len(anns))
        category_ids = np.fromiter((a["category_id"] for a in anns), np.int64, len(anns))
    except (KeyError, TypeError, ValueError):
        _first_missing(anns, ("id", "image_id", "category_id"), "annotations", source)
        raise ValueError(f"{source}: annotation ids must be integers") from None
    try:
        bboxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(len(anns), 4)
    except (KeyError, TypeError, ValueError):
        _first_missing(anns, ("bbox",), "annotations", source)
        for i, a in enumerate(anns):
            bb = a["bbox"]
            if not isinstance(bb, (list, tuple)) or len(bb) != 4:
                raise ValueError(
                    f"{source}: annotations[{i}] (id={a.get('id')}) bbox must be a list of "
                    f"4 numbers, got {bb!r}"
                ) from None
        raise ValueError(f"{source}: bbox values must be numbers") from None
    return CocoArrays(ann_ids, image_ids, category_ids, bboxes)


# -- progress and summaries -------------------------------------------------------------------------


class Progress:
    """A simple counter on stderr (``name: i/n``), throttled, for long runs."""

    def __init__(self, name: str, total: int, *, enabled: bool = True, every_s: float = 1.0):
        self.name, self.total, self.enabled, self.every_s = name, total, enabled, every_s
        self.count = 0
        self._last = time.monotonic()
        self._shown = False

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if self.enabled and now - self._last >= self.every_s:
            self._last = now
            self._shown = True
            print(f"\r{self.name}: {self.count}/{self.total}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._shown:
            print(f"\r{self.name}: {self.count}/{self.total}", file=sys.stderr, flush=True)


@dataclass
class Summary:
    """What a converter did: printed as one line, returned to Python callers."""

    command: str
    images: int = 0
    kept: int = 0
    dropped: int = 0
    outputs: List[str] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)
    unit: str = "annotations"

    def line(self) -> str:
        parts = [f"{self.command}: {self.images} images", f"{self.kept} {self.unit} kept"]
        parts.append(f"{self.dropped} dropped")
        parts += [f"{k} {v}" for k, v in self.extra.items()]
        out = self.outputs[0] if len(self.outputs) == 1 else f"{len(self.outputs)} files"
        return ", ".join(parts) + f" -> {out}"

    def report(self, verbose: bool) -> Summary:
        if verbose:
            print(self.line(), flush=True)
        return self


def check_out_of_inputs(out: PathLike, inputs: Sequence[Optional[PathLike]]) -> None:
    """Refuse to write an output over one of the inputs (converters never modify inputs)."""
    o = Path(out).resolve()
    for p in inputs:
        if p is not None and Path(p).exists() and Path(p).resolve() == o:
            raise ValueError(f"output {out} would overwrite the input {p}")
