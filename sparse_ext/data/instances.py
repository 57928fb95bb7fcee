"""Binary/semantic masks -> instance label maps by distance-transform watershed (``semantic2instances``).

Panteli, Teuwen, Horlings, Gavves, "Sparse-shot learning with exclusive cross-entropy for extremely
many localisations", ICCV 2021, supplementary material, Sec. 2 "Pre-processing" (TNBC and
WBC-NuClick): "For every image, we calculate local maximum points for the foreground areas. We
define a specific cell size for each dataset ... cell centroids are selected from the distinct local
maxima separated by at least the dataset-specific diameter. We then apply watershed with origin
points being the cell centroids".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
from scipy import ndimage as ndi

from sparse_ext.data.io import OutputSet, PathLike, Summary, list_images, progress, read_image

__all__ = ["semantic_to_instances", "semantic_dir_to_instances"]


def _split_class(fg: np.ndarray, min_distance: int) -> tuple[np.ndarray, int]:
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    components, n_comp = ndi.label(fg)
    if n_comp == 0:
        return np.zeros(fg.shape, np.int32), 0
    dist = ndi.distance_transform_edt(fg)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=components, exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-dist, markers, mask=fg)
    # components where no peak survived (e.g. single-pixel specks) become instances of their own
    rest = fg & (labels == 0)
    if rest.any():
        extra, n_extra = ndi.label(rest)
        labels[rest] = extra[rest] + len(peaks)
        return labels, len(peaks) + n_extra
    return labels, len(peaks)


def semantic_to_instances(mask: np.ndarray, diameter: float, *, background: int = 0) -> np.ndarray:
    """Instance labels (int32, 0 = background, 1..K) of a binary or semantic mask.

    Each class value other than ``background`` is split separately: Euclidean distance transform
    of the class's foreground, its local maxima separated by at least ``diameter`` pixels (Chebyshev
    distance, skimage ``peak_local_max`` with ``min_distance = ceil(diameter)``) are the cell
    centroids, and a marker-controlled watershed on the negated distance assigns the pixels.
    Two touching cells are separated when their centres are at least ``diameter`` apart.
    Instance ids are unique over all classes (class c's ids follow class c-1's).

    Raises:
        ValueError: mask not 2-D, diameter < 1.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if not diameter >= 1:
        raise ValueError(f"diameter must be >= 1 pixel, got {diameter}")
    min_distance = max(1, math.ceil(diameter))
    out = np.zeros(mask.shape, np.int32)
    offset = 0
    for value in np.unique(mask):
        if value == background:
            continue
        labels, n = _split_class(mask == value, min_distance)
        sel = labels > 0
        out[sel] = labels[sel] + offset
        offset += n
    return out


def semantic_dir_to_instances(
    masks_dir: PathLike,
    out_dir: PathLike,
    diameter: float,
    *,
    background: int = 0,
    out_ext: str = ".tif",
    verbose: bool = True,
) -> Summary:
    """Apply :func:`semantic_to_instances` to every mask in ``masks_dir``; write
    ``out_dir/<stem>.tif`` (uint16 when the ids fit, else int32). Empty masks give empty maps.

    All maps are written only when every mask was converted (see :class:`OutputSet`); ``out_dir``
    must not be, lie inside or hold ``masks_dir``.
    """
    out_dir = Path(out_dir)
    outputs = OutputSet([masks_dir], folders=[out_dir])
    masks = list_images(masks_dir, "mask")
    total = 0
    empty = 0
    with outputs:
        with progress(
            masks.items(), "semantic2instances", total=len(masks), verbose=verbose
        ) as bar:
            for stem, path in bar:
                mask = read_image(path)
                if mask.ndim == 3:
                    raise ValueError(f"mask {path} must be a 2-D class map, got shape {mask.shape}")
                inst = semantic_to_instances(mask, diameter, background=background)
                n = int(inst.max())
                total += n
                empty += n == 0
                dtype: Optional[type] = np.uint16 if n < 65536 else np.int32
                outputs.write_image(out_dir / f"{stem}{out_ext}", inst.astype(dtype))
    return Summary(
        "semantic2instances",
        images=len(masks),
        kept=total,
        dropped=0,
        outputs=[str(out_dir)],
        extra={"empty masks": empty} if empty else {},
        unit="instances",
    ).report(verbose)
