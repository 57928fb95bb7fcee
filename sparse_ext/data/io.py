"""Reading, validating and safely writing the files the converters exchange.

Every converter reads through these helpers (clear errors naming the file, key or value that is
wrong) and writes through an :class:`OutputSet`:

- **Inputs are never modified.** Before any work, :func:`check_outputs` refuses an output file
  that is an input file or lies inside an input folder, and an output folder that is, or lies in,
  an input folder or holds an input; the error names the output and the input.
- **All or nothing.** Each output file is written to a hidden temporary file in its destination
  folder (``.<name>.<random>.tmp<ext>``); only when the whole run has succeeded are they moved into
  place with :func:`os.replace`, one by one in the order they were written (index files such as
  ``tiles.json`` last). A run that fails, at any point, removes its temporary files and the
  folders it created: the previous outputs are untouched and no partial file is left. (The final
  moves are renames, each atomic; a crash during them can leave some files new and some old, every
  one of them complete.) Files of an earlier run that this run does not write are left alone.
- **Progress** is a tqdm bar on stderr, shown only when ``verbose``.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import json
import os
import re
import tempfile
import uuid
import warnings
from dataclasses import dataclass, field
from itertools import chain
from json.decoder import scanstring
from operator import itemgetter
from pathlib import Path
from typing import (
    Any,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypeVar,
    Union,
)

import numpy as np
from tqdm import tqdm

PathLike = Union[str, os.PathLike]
T = TypeVar("T")

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
TIFF_EXTENSIONS = (".tif", ".tiff", ".svs", ".ndpi", ".btf")

__all__ = [
    "IMAGE_EXTENSIONS",
    "CocoText",
    "OutputSet",
    "Summary",
    "atomic_path",
    "check_outputs",
    "coco_arrays",
    "encode_each",
    "gc_paused",
    "list_images",
    "load_coco",
    "load_coco_columns",
    "load_coco_text",
    "progress",
    "read_image",
    "validate_coco",
    "write_csv",
    "write_image",
    "write_json",
]


# -- progress -------------------------------------------------------------------------------------


def progress(
    iterable: Iterable[T],
    desc: str,
    *,
    total: Optional[int] = None,
    verbose: bool = True,
    unit: str = "it",
) -> tqdm:
    """A tqdm progress bar on stderr over ``iterable``; with ``verbose=False`` nothing is printed
    at all (tqdm's ``disable``). Use it as a context manager, ``with progress(...) as bar: for x in
    bar:``, so that the bar is closed (its line ended) before an error is reported."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not verbose)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector inside the block (its state is restored after).

    Building millions of JSON objects otherwise triggers collections that walk every object made
    so far: ``json.loads`` of a 1e6-annotation file runs about 2.5 times slower with the collector
    on. Parsed JSON holds no reference cycles, so pausing the collector keeps nothing alive longer.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# -- output checks -------------------------------------------------------------------------------


def _resolve(path: PathLike) -> Path:
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def _inside(path: Path, folder: Path) -> bool:
    return folder in path.parents


class _Inputs:
    """The resolved input files and folders of one run (paths that do not exist are ignored: the
    converter reports them as missing when it reads them)."""

    def __init__(self, inputs: Iterable[Optional[PathLike]]):
        self.files: List[Tuple[Path, str]] = []
        self.folders: List[Tuple[Path, str]] = []
        for p in inputs:
            if p is None or not Path(p).exists():
                continue
            (self.folders if Path(p).is_dir() else self.files).append((_resolve(p), str(p)))

    def check_file(self, out: PathLike) -> None:
        o = _resolve(out)
        for f, name in self.files:
            if o == f:
                raise ValueError(
                    f"output {out} would replace the input {name}: converters never modify their "
                    f"inputs; choose another output path"
                )
        for d, name in self.folders:
            if o == d:
                raise ValueError(
                    f"output {out} is the input folder {name}: choose an output outside it"
                )
            if _inside(o, d):
                what = "would replace a file of" if o.exists() else "lies inside"
                raise ValueError(
                    f"output {out} {what} the input folder {name}: converters never write into "
                    f"their input folders; choose an output outside {name}"
                )

    def check_folder(self, out: PathLike) -> None:
        o = _resolve(out)
        for d, name in self.folders:
            if o == d or _inside(o, d):
                raise ValueError(
                    f"output folder {out} {'is' if o == d else 'lies inside'} the input folder "
                    f"{name}: its files could be overwritten; choose a folder outside {name}"
                )
        for f, name in self.files:
            if f == o:
                raise ValueError(f"output folder {out} is the input file {name}")
            if f.parent == o:
                raise ValueError(
                    f"output folder {out} holds the input {name}, which an output of the same name "
                    f"would replace; choose an output folder without inputs in it"
                )


def check_outputs(
    inputs: Iterable[Optional[PathLike]],
    files: Iterable[PathLike] = (),
    folders: Iterable[PathLike] = (),
) -> None:
    """Refuse outputs that could replace or modify an input (converters never modify inputs).

    ``inputs`` are the files and folders a run reads (``None`` and missing paths are skipped; a
    folder counts with everything below it); ``files`` the output files whose names are known;
    ``folders`` the folders the run writes files with generated names into (directly, not into
    sub-folders). Paths are compared after resolving symbolic links.

    Raises:
        ValueError: an output file is an input file or lies inside an input folder; an output folder
            is an input folder, lies inside one, or directly holds an input file. The message names
            the output and the input.
    """
    checker = _Inputs(inputs)
    for f in files:
        checker.check_file(f)
    for d in folders:
        checker.check_folder(d)


# -- atomic writes ------------------------------------------------------------------------------


def _new_file_mode() -> int:
    """Permissions of a newly created file under the current umask (mkstemp uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _temp_beside(path: Path) -> str:
    """A new empty hidden file next to ``path``, keeping its extension (writers that choose the
    format from the suffix still work), with the permissions a plain ``open`` would give."""
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    os.chmod(tmp, _new_file_mode())
    return tmp


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success move it over ``path`` (os.replace).

    On error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _dump_json(path: PathLike, obj: Any, indent: Optional[int]) -> None:
    # ``json.dumps`` (one shot) uses CPython's C encoder; ``json.dump`` streams through the pure
    # Python one and is several times slower on million-annotation files.
    text = json.dumps(obj, indent=indent, separators=None if indent else (",", ":"))
    with open(path, "w") as f:
        f.write(text)


def _dump_csv(path: PathLike, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _dump_image(path: PathLike, array: np.ndarray, suffix: str) -> None:
    if suffix.lower() in TIFF_EXTENSIONS:
        import tifffile

        tifffile.imwrite(path, array, compression="zlib")
    else:
        from skimage import io as skio

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            skio.imsave(path, array, check_contrast=False)


def write_json(path: PathLike, obj: Any, *, indent: Optional[int] = None) -> None:
    """Write ``obj`` as JSON atomically (compact by default: COCO files can be large)."""
    with atomic_path(path) as tmp:
        _dump_json(tmp, obj, indent)


def write_csv(path: PathLike, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write a CSV file with ``header`` and ``rows`` atomically."""
    with atomic_path(path) as tmp:
        _dump_csv(tmp, header, rows)


def write_image(path: PathLike, array: np.ndarray) -> None:
    """Write an image atomically: TIFF via tifffile (zlib), anything else via scikit-image."""
    with atomic_path(path) as tmp:
        _dump_image(tmp, array, Path(path).suffix)


class OutputSet:
    """The output files of one converter run, committed together when the run succeeds.

    Use as a context manager: ``with OutputSet(inputs, files=..., folders=...) as out:`` checks the
    declared outputs against the inputs (:func:`check_outputs`) before any work; every file is
    written through :meth:`path` (or the ``write_*`` helpers) to a hidden temporary file in its
    destination folder; leaving the block normally moves them all into place (:func:`os.replace`, in
    the order they were written), leaving it with an exception deletes them and the folders the run
    created, so earlier outputs stay as they were.
    """

    def __init__(
        self,
        inputs: Iterable[Optional[PathLike]],
        *,
        files: Iterable[PathLike] = (),
        folders: Iterable[PathLike] = (),
    ):
        self._inputs = _Inputs(inputs)
        for f in files:
            self._inputs.check_file(f)
        for d in folders:
            self._inputs.check_folder(d)
        self._staged: List[Tuple[str, str]] = []  # (temporary, destination); plain strings:
        self._dests: Set[str] = set()  # a slide can have 1e5 tiles
        self._created: List[Path] = []
        self.committed: List[str] = []

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def _mkdir(self, folder: Path) -> None:
        missing = []
        p = folder
        while not p.exists():
            missing.append(p)
            p = p.parent
        folder.mkdir(parents=True, exist_ok=True)
        self._created += reversed(missing)  # parents first

    def path(self, dest: PathLike) -> str:
        """A temporary file to write ``dest``'s content into (moved to ``dest`` on commit).

        Raises:
            ValueError: ``dest`` is, or lies inside, an input (see :func:`check_outputs`), or the
                run already wrote ``dest``.
        """
        dest = Path(dest)
        self._inputs.check_file(dest)
        key = str(_resolve(dest))
        if key in self._dests:
            raise ValueError(f"two outputs of this run would be written to {dest}")
        self._mkdir(dest.parent)
        tmp = _temp_beside(dest)
        self._staged.append((tmp, str(dest)))
        self._dests.add(key)
        return tmp

    def write_json(self, dest: PathLike, obj: Any, *, indent: Optional[int] = None) -> None:
        """Stage ``obj`` as JSON (compact unless ``indent``)."""
        _dump_json(self.path(dest), obj, indent)

    def write_csv(self, dest: PathLike, header: Sequence[str], rows: Sequence[Sequence[Any]]):
        """Stage a CSV file with ``header`` and ``rows``."""
        _dump_csv(self.path(dest), header, rows)

    def write_image(self, dest: PathLike, array: np.ndarray) -> None:
        """Stage an image: TIFF via tifffile (zlib), anything else via scikit-image."""
        _dump_image(self.path(dest), array, Path(dest).suffix)

    def commit(self) -> List[str]:
        """Move every staged file into place; returns the destinations."""
        try:
            for tmp, dest in self._staged:
                os.replace(tmp, dest)
                self.committed.append(str(dest))
        except BaseException:
            self._staged = self._staged[len(self.committed) :]
            self.abort(remove_dirs=False)
            raise
        self._staged = []
        return self.committed

    def abort(self, *, remove_dirs: bool = True) -> None:
        """Delete the staged files (and, unless told not to, the folders this run created)."""
        for tmp, _ in self._staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._staged = []
        if remove_dirs:
            for d in reversed(self._created):  # deepest first
                with contextlib.suppress(OSError):
                    d.rmdir()  # only if empty


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
    return load_coco_columns(path, check_bounds=check_bounds)[0]


def load_coco_columns(
    path: PathLike, *, check_bounds: bool = True
) -> Tuple[Dict[str, Any], CocoArrays]:
    """:func:`load_coco` and the annotations' :class:`CocoArrays` (computed once)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO file not found: {path}")
    with open(path) as f:
        text = f.read()
    with gc_paused():
        try:
            coco = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        del text
        arrays = validate_coco(coco, source=str(path), check_bounds=check_bounds)
    return coco, arrays


_IMAGE_KEYS = ("id", "width", "height", "file_name")


def _first_missing(records: Sequence[Mapping], keys: Sequence[str], where: str, source: str):
    for i, r in enumerate(records):
        if not isinstance(r, Mapping):
            raise ValueError(f"{source}: {where}[{i}] is not a JSON object")
        for k in keys:
            if k not in r:
                ident = f" (id={r['id']})" if "id" in r else ""
                raise KeyError(f"{source}: {where}[{i}]{ident} has no key '{k}'")


def _has_duplicates(values: np.ndarray) -> bool:
    s = np.sort(values)  # a sort is much faster than np.unique's hash table on 1e6 ids
    return bool((s[1:] == s[:-1]).any())


def validate_coco(coco: Any, *, source: str = "COCO", check_bounds: bool = True) -> CocoArrays:
    """Check the structure a converter relies on; raise one clear error naming what is wrong;
    return the annotations' columns (:class:`CocoArrays`).

    Checked: top-level ``images``/``annotations``/``categories`` lists; image keys
    ``id, width, height, file_name``; annotation keys ``id, image_id, category_id, bbox``; unique
    ids; every annotation's image and category exist; boxes are 4 finite numbers with non-negative
    width/height and (``check_bounds``) lie inside their image.
    """
    img_ids, cat_ids = _validate_top(coco, source)
    arr = coco_arrays(coco, source=source)  # names the first annotation lacking a key
    _validate_columns(arr, img_ids, cat_ids, coco["images"], source, check_bounds)
    return arr


def _validate_top(coco: Any, source: str) -> Tuple[np.ndarray, np.ndarray]:
    """Top-level keys, image and category records; returns the image and category ids."""
    if not isinstance(coco, Mapping):
        raise ValueError(f"{source}: top level must be a JSON object")
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise KeyError(f"{source}: missing top-level key '{key}'")
        if not isinstance(coco[key], list):
            raise ValueError(f"{source}: '{key}' must be a list")
    _first_missing(coco["images"], _IMAGE_KEYS, "images", source)
    _first_missing(coco["categories"], ("id", "name"), "categories", source)
    img_ids = np.array([im["id"] for im in coco["images"]], dtype=np.int64)
    if _has_duplicates(img_ids):
        raise ValueError(f"{source}: duplicate image ids")
    cat_ids = np.array([c["id"] for c in coco["categories"]], dtype=np.int64)
    return img_ids, cat_ids


def _validate_columns(
    arr: CocoArrays,
    img_ids: np.ndarray,
    cat_ids: np.ndarray,
    images: Sequence[Mapping[str, Any]],
    source: str,
    check_bounds: bool,
) -> None:
    """Unique annotation ids, known images and categories, valid boxes inside their image."""
    if _has_duplicates(arr.ann_ids):
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


def _column_arrays(ids, image_ids, category_ids, boxes: list, n: int) -> CocoArrays:
    """Columns from iterables of the values (raises KeyError/TypeError/ValueError on bad ones)."""
    ann_ids = np.fromiter(ids, np.int64, n)
    image_ids = np.fromiter(image_ids, np.int64, n)
    category_ids = np.fromiter(category_ids, np.int64, n)
    if n and not (np.fromiter(map(len, boxes), np.int64, n) == 4).all():
        raise ValueError("a bbox is not 4 numbers")
    bboxes = np.fromiter(chain.from_iterable(boxes), np.float64, 4 * n).reshape(n, 4)
    return CocoArrays(ann_ids, image_ids, category_ids, bboxes)


def coco_arrays(coco: Mapping[str, Any], *, source: str = "COCO") -> CocoArrays:
    """Columns of ``coco['annotations']`` as numpy arrays (KeyError naming a missing key).

    The columns are gathered with ``map(itemgetter(...))`` (a C loop) rather than a generator: it
    matters at a million annotations."""
    anns = coco["annotations"]
    n = len(anns)
    try:
        boxes = list(map(itemgetter("bbox"), anns))
        return _column_arrays(
            map(itemgetter("id"), anns),
            map(itemgetter("image_id"), anns),
            map(itemgetter("category_id"), anns),
            boxes,
            n,
        )
    except (KeyError, TypeError, ValueError):
        pass
    _first_missing(anns, ("id", "image_id", "category_id", "bbox"), "annotations", source)
    for key in ("id", "image_id", "category_id"):
        try:
            np.fromiter(map(itemgetter(key), anns), np.int64, n)
        except (TypeError, ValueError):
            raise ValueError(f"{source}: annotation ids must be integers ('{key}')") from None
    for i, a in enumerate(anns):
        bb = a["bbox"]
        if not isinstance(bb, (list, tuple)) or len(bb) != 4:
            raise ValueError(
                f"{source}: annotations[{i}] (id={a.get('id')}) bbox must be a list of "
                f"4 numbers, got {bb!r}"
            )
    raise ValueError(f"{source}: bbox values must be numbers")


# -- COCO files read for subsetting ----------------------------------------------------------------


def encode_each(items: Sequence[Any]) -> List[bytes]:
    """Compact JSON of every item, as the bytes of ``json.dumps(item, separators=(",", ":"))``,
    from one call of the C encoder: the items are dumped as one list with a random separator string
    between them and the text is split at it. Should the separator occur anywhere else (it cannot,
    short of guessing a random 128-bit token), the split count shows it and the items are encoded
    one by one. (``json.dumps`` escapes non-ASCII characters, so the text is ASCII.)"""
    n = len(items)
    if n == 0:
        return []
    token = "\x00" + uuid.uuid4().hex  # encoded as "\u0000<hex>": never a raw NUL in the text
    interleaved: List[Any] = [token] * (2 * n - 1)
    interleaved[::2] = items
    text = json.dumps(interleaved, separators=(",", ":")).encode("ascii")
    parts = text[1:-1].split(b"," + json.dumps(token).encode("ascii") + b",")
    if len(parts) == n:
        return parts
    return [json.dumps(i, separators=(",", ":")).encode("ascii") for i in items]  # pragma: no cover


@dataclass
class CocoText:
    """A validated COCO file read for writing subsets of its annotations.

    ``head`` is the top-level object without ``annotations`` (parsed), ``arrays`` the annotations'
    columns, ``texts`` the JSON text (bytes) of every annotation and ``instance_ids`` their
    ``instance_id`` values (``None`` where missing). Subsets are written from the texts, so an
    annotation is never decoded and encoded again: copied verbatim from the input (or, when the
    file had to be read the slow way, as ``json.dumps`` writes it)."""

    head: Dict[str, Any]
    arrays: CocoArrays
    texts: np.ndarray  # object array of bytes
    instance_ids: List[Any]

    def __len__(self) -> int:
        return len(self.texts)

    def write_subset(self, path: PathLike, keep: np.ndarray, head: Mapping[str, Any]) -> None:
        """Write ``{**head, "annotations": [annotation k for k in keep]}`` (compact JSON)."""
        text = json.dumps(dict(head), separators=(",", ":")).encode("ascii")
        with open(path, "wb") as f:
            f.write(text[:-1] + (b"," if head else b"") + b'"annotations":[')
            f.write(b",".join(self.texts[keep].tolist()))
            f.write(b"]}")


_WS = re.compile(r"[ \t\n\r]*")


def _scan_coco(text: str):
    """One pass over a COCO document that parses the annotations one at a time, keeping their
    offsets and the columns a converter needs but not the annotation objects (the C scanner of the
    json module does the parsing). Returns ``(head, starts, ends, columns)``, or None whenever the
    text is not a JSON object with one ``annotations`` array of objects holding those keys: the
    caller then reads it with ``json.loads`` and reports what is wrong."""
    try:
        return _scan_top(text)
    except (AttributeError, IndexError, KeyError, StopIteration, TypeError, ValueError):
        return None


def _scan_top(text: str):
    scan = json.JSONDecoder().scan_once
    ws = _WS.match
    head: Dict[str, Any] = {}
    found = None
    i = ws(text, 0).end()
    if text[i] != "{":
        return None
    i = ws(text, i + 1).end()
    while True:
        if text[i] != '"':
            return None
        key, i = scanstring(text, i + 1)
        i = ws(text, i).end()
        if text[i] != ":":
            return None
        i = ws(text, i + 1).end()
        if key == "annotations":
            if found is not None or text[i] != "[":
                return None  # a repeated key or not an array: json.loads decides
            found = _scan_annotations(text, i, scan, ws)
            if found is None:
                return None
            i = found[-1]
        else:
            head[key], i = scan(text, i)
        i = ws(text, i).end()
        if text[i] == ",":
            i = ws(text, i + 1).end()
            continue
        if text[i] != "}":
            return None
        break
    if found is None or ws(text, i + 1).end() != len(text):
        return None
    return (head, *found[:-1])


def _scan_annotations(text: str, i: int, scan, ws):
    starts: List[int] = []
    ends: List[int] = []
    cols: Tuple[List[Any], ...] = ([], [], [], [], [])
    s_app, e_app = starts.append, ends.append
    id_app, img_app, cat_app, box_app, inst_app = (c.append for c in cols)
    i = ws(text, i + 1).end()
    if text[i] == "]":
        return starts, ends, cols, i + 1
    while True:
        obj, end = scan(text, i)
        s_app(i)
        e_app(end)
        id_app(obj["id"])
        img_app(obj["image_id"])
        cat_app(obj["category_id"])
        box_app(obj["bbox"])
        inst_app(obj.get("instance_id"))
        c = text[end]
        if c == ",":
            i = end + 1
            if text[i] in " \t\n\r":
                i = ws(text, i).end()
            continue
        if c != "]":
            end = ws(text, end).end()
            c = text[end]
            if c == ",":
                i = ws(text, end + 1).end()
                continue
            if c != "]":
                return None
        return starts, ends, cols, end + 1


def load_coco_text(path: PathLike, *, check_bounds: bool = True) -> CocoText:
    """Read and validate a COCO file (as :func:`load_coco`) for writing subsets of it.

    Fast path (a million annotations in about half the time of ``json.loads`` + encoding): the
    annotations are parsed one at a time by the json module's C scanner, their columns kept and
    their text sliced from the file, without keeping the annotation objects. Anything unusual (a
    repeated ``annotations`` key, an annotation lacking a key, bad values) goes the slow way,
    ``json.loads`` and :func:`validate_coco`, whose errors name what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO file not found: {path}")
    with open(path) as f:
        text = f.read()
    source = str(path)
    with gc_paused():
        scanned = _scan_coco(text)
        if scanned is not None:
            head, starts, ends, (ids, img, cat, boxes, inst) = scanned
            try:
                arrays = _column_arrays(ids, img, cat, boxes, len(ids))
            except (KeyError, TypeError, ValueError):
                scanned = None  # the slow path names the bad value
        if scanned is None:
            try:
                coco = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not valid JSON: {e}") from e
            arrays = validate_coco(coco, source=source, check_bounds=check_bounds)
            anns = coco.pop("annotations")
            texts = np.empty(len(anns), dtype=object)
            texts[:] = encode_each(anns)
            return CocoText(coco, arrays, texts, [a.get("instance_id") for a in anns])
        img_ids, cat_ids = _validate_top({**head, "annotations": []}, source)
        _validate_columns(arrays, img_ids, cat_ids, head["images"], source, check_bounds)
        texts = np.empty(len(starts), dtype=object)
        if text.isascii():  # str offsets are byte offsets
            raw = text.encode("ascii")
            del text
            texts[:] = [raw[a:b] for a, b in zip(starts, ends)]
        else:
            texts[:] = [text[a:b].encode("utf-8") for a, b in zip(starts, ends)]
        return CocoText(head, arrays, texts, inst)


# -- summaries ------------------------------------------------------------------------------------


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
