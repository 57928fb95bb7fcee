"""MMSegmentation 1.x adapter: importing it registers sparse_ext's components in mmseg's registries.

Add to an MMSeg config::

    custom_imports = dict(imports=["sparse_ext.mmseg"], allow_failed_imports=False)

Importing also allow-lists the globals of mmengine checkpoints for torch's ``weights_only`` load
default (see :mod:`sparse_ext.mmseg.checkpoint`), so MMSeg's own tools save, resume and test.

Registered: losses, annealing hook, datasets, block-label transform and grouped batch sampler
(``losses``, ``hooks``, ``datasets``, ``transforms``, ``samplers``); the max-min segmentor, the
image-label dataset and the metrics (``maxmin``, ``image_label_dataset``, ``metrics``).
"""

from sparse_ext.mmseg.checkpoint import allow_mmengine_checkpoints
from sparse_ext.mmseg.datasets import LSRBlockDataset, PartialNucleiDataset
from sparse_ext.mmseg.hooks import SparseLossAnnealingHook
from sparse_ext.mmseg.image_label_dataset import ImageLabelDataset
from sparse_ext.mmseg.losses import (
    ExclusiveCrossEntropyLoss,
    LabelSuperResolutionLoss,
    NonNegativePULoss,
    OneHotFocalLoss,
    SampledCrossEntropyLoss,
)
from sparse_ext.mmseg.maxmin import MaxMinSegmentor
from sparse_ext.mmseg.metrics import MaxMinMetric, SparseSegMetric
from sparse_ext.mmseg.samplers import GroupedBlockBatchSampler
from sparse_ext.mmseg.transforms import LoadBlockLabel

allow_mmengine_checkpoints()

__all__ = [
    "ExclusiveCrossEntropyLoss",
    "GroupedBlockBatchSampler",
    "ImageLabelDataset",
    "LSRBlockDataset",
    "LabelSuperResolutionLoss",
    "LoadBlockLabel",
    "MaxMinMetric",
    "MaxMinSegmentor",
    "NonNegativePULoss",
    "OneHotFocalLoss",
    "PartialNucleiDataset",
    "SampledCrossEntropyLoss",
    "SparseLossAnnealingHook",
    "SparseSegMetric",
    "allow_mmengine_checkpoints",
]
