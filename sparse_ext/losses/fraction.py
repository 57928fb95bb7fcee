"""The annotated fraction f: the share of the objects that carry a label (users know it roughly).

The sparse losses derive their settings from f and from statistics of the labelled data: ECE's
keep probability (:func:`sparse_ext.losses.exclusive_cross_entropy.background_keep_prob`), nnPU's
priors (:func:`sparse_ext.losses.nnpu.unlabeled_prior` with the object share of
:func:`object_share`). Where f is unknown they fall back to :data:`FALLBACK_ANNOTATED_FRACTION`
with a warning (:func:`fallback_annotated_fraction`).
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor

from sparse_ext.losses._validate import check_fraction, check_range, check_unit

__all__ = [
    "FALLBACK_ANNOTATED_FRACTION",
    "FALLBACK_WARNING",
    "FRACTION_ESTIMATE_END",
    "FRACTION_ESTIMATE_START",
    "FRACTION_TOLERANCE",
    "UNCHECKED_FRACTION_CEILING",
    "LabelFrequencyEstimate",
    "LabelledShare",
    "checked_fraction",
    "fallback_annotated_fraction",
    "object_share",
]

#: f assumed where neither the config nor the data say it: the low end of the 10-40 % that
#: pathology annotators typically reach, so that the recipes err towards keeping fewer
#: unannotated terms (docs/benchmarks: what a wrong f costs).
FALLBACK_ANNOTATED_FRACTION = 0.2

#: Training progress over which the sparse losses estimate f from the model's scores
#: (:class:`LabelFrequencyEstimate`, while no unannotated term is excluded), and at whose end the
#: estimate is compared with the given f (:func:`checked_fraction`): the second half of the
#: "ce_warmup" schedule's warm-up (before it, the scores of an untrained model rank poorly).
FRACTION_ESTIMATE_START = 0.1
FRACTION_ESTIMATE_END = 0.2

#: The largest f the recipes train with until the check (:attr:`ExclusiveCrossEntropy.
#: fraction_check_pending`): an over-estimated f breaks training within its first tens of
#: iterations, before any estimate exists, and a later correction does not undo it (told 0.6 at
#: a true 0.3 and corrected at 20 %, HeLa still ended at Dice 0; docs/benchmarks). Told 0.15 at
#: a true 0.3 trains well.
UNCHECKED_FRACTION_CEILING = 0.2

#: How many times a given f may exceed the labelled data's estimate before the estimate replaces
#: it (:func:`checked_fraction`). The estimate is biased low, so a smaller margin would override
#: correct values (docs/benchmarks: 0.26 to 0.35 at a true 0.3 at the end of the warm-up).
FRACTION_TOLERANCE = 1.5

# object shares are kept below 1: a share of 1 leaves no background to learn
_MAX_SHARE = 0.99


#: A regular expression matching the warning of :func:`fallback_annotated_fraction` (for
#: ``warnings.filterwarnings(message=...)``).
FALLBACK_WARNING = r".*: the annotated fraction is unknown"


def fallback_annotated_fraction(owner: str, setting: str = "annotated_fraction=...") -> float:
    """Warn that ``owner`` does not know the annotated fraction (``setting`` gives it); return
    the fallback."""
    warnings.warn(
        f"{owner}: the annotated fraction is unknown (give {setting}, or train on "
        "data that records it: the COCO file's info.sparse_fraction or a labels/frac<NNN> "
        f"folder); assuming {FALLBACK_ANNOTATED_FRACTION}",
        UserWarning,
        stacklevel=3,
    )
    return FALLBACK_ANNOTATED_FRACTION


def checked_fraction(
    given: float, estimate: Optional[float], tolerance: float = FRACTION_TOLERANCE
) -> float:
    """The annotated fraction to train with: ``given``, or ``estimate`` where ``given`` exceeds it
    more than ``tolerance`` times.

    Only an over-estimated f is corrected: it raises the keep probability of the unannotated
    terms and the recipes collapse to background (told 2 f at a true 30 %, docs/benchmarks),
    while an under-estimated f costs little. The estimate (:class:`LabelFrequencyEstimate`) is
    biased low, hence the tolerance; None (no labelled element seen) keeps ``given``.
    """
    f = check_fraction("annotated_fraction", given)
    tol = check_range("tolerance", tolerance, 1.0, None)
    if estimate is None:
        return f
    e = check_unit("estimate", estimate)
    return e if e > 0.0 and f > tol * e else f


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


class LabelFrequencyEstimate:
    """Estimate of the annotated fraction f from a model's scores: the share of labelled
    elements among those it scores at least as high as the typical labelled one.

    Bekker and Davis (AAAI 2018, TIcE): for any subset S of the data, the share of labelled
    elements in S, |L cap S| / |S|, is a lower bound on the label frequency c = p(labelled |
    positive) (here f), tight when S holds positives only. Labelled and unlabelled objects look
    alike, so a model scores both alike whatever it has learnt so far; S = the elements scored
    at least the median score of the batch's labelled elements is then mostly object, and
    ``f = sum_batches |L cap S| / sum_batches |S|`` (a ratio of counts over the batches seen).
    Only the ranking of the scores matters: no calibration, no correction for background
    sampling, and a model that has not converged still gives a useful value. (Elkan and Noto's
    estimator, KDD 2008, the mean score of the labelled elements, needs the calibrated
    optimum, which a model at 20 % of a short schedule has not reached.)
    """

    def __init__(self) -> None:
        self.labelled_in_top = 0
        self.top = 0
        self.updates = 0

    def update(self, scores: Tensor, labelled: Tensor) -> None:
        """Add one batch (counted in :attr:`updates`): ``scores`` the foreground probabilities
        of the non-ignored elements, ``labelled`` (same shape, bool) where they are annotated
        foreground; no labelled element: no change."""
        if scores.shape != labelled.shape:
            raise ValueError(
                f"scores {tuple(scores.shape)} and labelled {tuple(labelled.shape)} differ"
            )
        scores = scores.detach()
        labelled = labelled.bool()
        positives = scores[labelled]
        if positives.numel() == 0:
            return
        top = scores >= positives.median()
        self.labelled_in_top += int(torch.count_nonzero(top & labelled))
        self.top += int(torch.count_nonzero(top))
        self.updates += 1

    @property
    def value(self) -> Optional[float]:
        """The estimate of f, None before any labelled element was seen."""
        return self.labelled_in_top / self.top if self.top else None

    def reset(self) -> None:
        self.labelled_in_top = self.top = self.updates = 0
