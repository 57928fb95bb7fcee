"""Converters and sample data: COCO-style partial annotations, sparse subsets, tiling, LSR blocks.

Each converter is a function here and a subcommand of ``sparse-ext convert`` (see docs/data.md):

==========================  ==================================================================
``masks_to_coco``           instance label images -> COCO (boxes, RLE, ``instance_id``)
``points_to_coco``          point annotations -> fixed-size boxes clipped to the image
``semantic_to_instances``   binary/semantic mask -> instances (distance-transform watershed)
``subsample_coco``          nested sparse variants (10..90 %) + matching sparse label maps
``one_per_patch``           one annotation per overlapping image patch (Zhao, Pang et al. 2021)
``tile_image``              overlapping tiles of large (lazily read) images with annotations
``merge_detections``        per-tile detections -> image coordinates, class-wise NMS
``make_lsr_blocks``         LSR image blocks, low-res labels and the eta/rho table
``fetch_dataset``           real nuclei data (HeLa, BBBC007) via the package registry
==========================  ==================================================================

Only numpy, scipy, scikit-image, pycocotools, tifffile and tqdm (progress bars) are imported here
(torch and an NMS provider only inside ``merge_detections``). Outputs never replace inputs and are
written all or nothing (see :mod:`sparse_ext.data.io`).
"""

from sparse_ext.data.coco import encode_instances, masks_to_coco, points_to_coco
from sparse_ext.data.fetch import DATASETS, FetchError, fetch_dataset, normalise_image
from sparse_ext.data.instances import semantic_dir_to_instances, semantic_to_instances
from sparse_ext.data.io import Summary, load_coco, validate_coco
from sparse_ext.data.lsr_blocks import (
    make_lsr_blocks,
    quantise_fraction,
    read_block_labels,
    read_table_csv,
)
from sparse_ext.data.patches import grid_origins, one_per_patch
from sparse_ext.data.subsample import (
    DEFAULT_FRACTIONS,
    nested_fractions,
    sparse_label_map,
    subsample_coco,
)
from sparse_ext.data.tiling import merge_detections, open_region_reader, tile_image

__all__ = [
    "DATASETS",
    "DEFAULT_FRACTIONS",
    "FetchError",
    "Summary",
    "encode_instances",
    "fetch_dataset",
    "grid_origins",
    "load_coco",
    "make_lsr_blocks",
    "masks_to_coco",
    "merge_detections",
    "nested_fractions",
    "normalise_image",
    "one_per_patch",
    "open_region_reader",
    "points_to_coco",
    "quantise_fraction",
    "read_block_labels",
    "read_table_csv",
    "semantic_dir_to_instances",
    "semantic_to_instances",
    "sparse_label_map",
    "subsample_coco",
    "tile_image",
    "validate_coco",
]
