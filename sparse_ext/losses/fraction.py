"""The annotated fraction f: the share of the objects that carry a label (users know it roughly).

The sparse losses derive their settings from f and from statistics of the labelled data: ECE's
keep probability (:func:`sparse_ext.losses.exclusive_cross_entropy.background_keep_prob`), nnPU's
priors (:func:`sparse_ext.losses.nnpu.unlabeled_prior` with the object share of
:func:`object_share`). Where f is unknown they fall back to :data:`FALLBACK_ANNOTATED_FRACTION`
with a warning (:func:`fallback_annotated_fraction`).
"""

from __future__ import annotations

import warnings

from sparse_ext.losses._validate import check_fraction, check_range

__all__ = [
    "FALLBACK_ANNOTATED_FRACTION",
    "LabelledShare",
    "fallback_annotated_fraction",
    "object_share",
]

#: f assumed where neither the config nor the data say it: the low end of the 10-40 % that
#: pathology annotators typically reach, so that the recipes err towards keeping fewer
#: unannotated terms (docs/benchmarks: what a wrong f costs).
FALLBACK_ANNOTATED_FRACTION = 0.2

# object shares are kept below 1: a share of 1 leaves no background to learn
_MAX_SHARE = 0.99


def fallback_annotated_fraction(owner: str) -> float:
    """Warn that ``owner`` does not know the annotated fraction; return the fallback."""
    warnings.warn(
        f"{owner}: the annotated fraction is unknown (give annotated_fraction=..., or train on "
        "data that records it: the COCO file's info.sparse_fraction or a labels/frac<NNN> "
        f"folder); assuming {FALLBACK_ANNOTATED_FRACTION}",
        UserWarning,
        stacklevel=3,
    )
    return FALLBACK_ANNOTATED_FRACTION


def object_share(labelled_share: float, annotated_fraction: float) -> float:
    """q = l / f, the share of candidates (pixels) on a true object when a share l of them is
    labelled and a fraction f of the objects is annotated (at most 0.99)."""
    share = check_range("labelled_share", labelled_share, 0.0, 1.0)
    f = check_fraction("annotated_fraction", annotated_fraction)
    return min(share / f, _MAX_SHARE)


class LabelledShare:
    """Running share of labelled (positive) elements over the batches seen so far: the
    labelled-data statistic the pixel priors use, steadier than one batch's share (a batch of
    crops may hold no annotated object at low f)."""

    def __init__(self) -> None:
        self.labelled = 0
        self.total = 0

    def update(self, labelled: int, total: int) -> float:
        """Add one batch's counts; return the running share (0 before any element)."""
        self.labelled += int(labelled)
        self.total += int(total)
        return self.value

    @property
    def value(self) -> float:
        return self.labelled / self.total if self.total else 0.0
