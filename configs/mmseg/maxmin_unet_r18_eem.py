# Max-min uncertainty weakly-supervised segmentation (Belharbi et al., IEEE TMI 2022) from image-level
# classes: MMSeg's UNet (fcn_unet_s5-d16) as localizer, a ResNetV1c-18 classifier, EEM regulariser.
#
#   SEM instead of EEM:   --cfg-options model.regularizer=sem
#   no regulariser:       --cfg-options model.regularizer=None
#   no size barrier:      --cfg-options model.size_weight=0  (Table 4 without "ASC")
#   classifier-only CAM:  --cfg-options model.objective=cam  (Table 4 "Wildcat": localizer CE only)
#   data:                 --cfg-options train_dataloader.dataset.data_root=DATA
#                         val_dataloader.dataset.data_root=DATA test_dataloader.dataset.data_root=DATA
#
# Data layout (ImageLabelDataset, list files written by the benchmark):
#   DATA/{train,val,test}.csv   columns image,label[,mask]
#   DATA/images/<image>         DATA/masks/<mask>  (0 bg, 1 fg; evaluation only)
# Image classes are ('negative', 'positive'): e.g. crops with / without enough nuclei.
#
# Tiny CPU run (tests, quick benchmark): see docs/maxmin_metrics.md for the --cfg-options that
# shrink the UNet and the ResNet (base_channels 8, 64x64 crops).
_base_ = [
    "mmseg::_base_/models/fcn_unet_s5-d16.py",
    "mmseg::_base_/default_runtime.py",
]
custom_imports = dict(imports=["sparse_ext.mmseg"], allow_failed_imports=False)

norm_cfg = dict(type="BN", requires_grad=True)  # SyncBN -> BN: runs on one CPU/GPU
image_classes = ("negative", "positive")
max_epochs = 80  # with train_cfg.max_epochs, also change model.barrier.epochs
data_preprocessor = dict(size_divisor=16, test_cfg=dict(size_divisor=16))

model = dict(
    type="MaxMinSegmentor",
    data_preprocessor=data_preprocessor,
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(num_classes=len(image_classes), norm_cfg=norm_cfg, dropout_ratio=0.1),
    auxiliary_head=None,
    classifier=dict(
        backbone=dict(
            type="ResNetV1c",
            depth=18,
            in_channels=3,
            out_indices=(3,),
            norm_cfg=norm_cfg,
            contract_dilation=True,
        ),
        dropout=0.1,
    ),
    num_classes=len(image_classes),
    regularizer="eem",  # "sem" | None
    lam=1e-7,  # Belharbi et al. on GlaS; its ablation spans 1e-7 .. 1e-1
    size_weight=1.0,
    localizer_weight=1.0,
    mask=dict(omega=5.0, sigma=0.15),  # Eq. 12
    pooling=dict(kmax=0.3, kmin=0.0, alpha=0.6),  # WILDCAT, Belharbi et al. on GlaS
    # t = min(5 * 1.01**epoch, 10); epoch = training progress * epochs (SparseLossAnnealingHook)
    barrier=dict(t0=5.0, factor=1.01, t_max=10.0, epochs=max_epochs),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)

# -- data
dataset_type = "ImageLabelDataset"
data_root = "data/maxmin"
meta_keys = (
    "img_path",
    "seg_map_path",
    "ori_shape",
    "img_shape",
    "pad_shape",
    "scale_factor",
    "flip",
    "flip_direction",
    "reduce_zero_label",
    "img_label",
)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="RandomFlip", prob=[0.25, 0.25], direction=["horizontal", "vertical"]),
    dict(type="PackSegInputs", meta_keys=meta_keys),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),  # evaluation masks; never in the train pipeline
    dict(type="PackSegInputs", meta_keys=meta_keys),
]


def _dataset(split, pipeline):
    return dict(
        type=dataset_type,
        data_root=data_root,
        ann_file=f"{split}.csv",
        data_prefix=dict(img_path="images", seg_map_path="masks"),
        metainfo=dict(image_classes=image_classes),
        pipeline=pipeline,
    )


train_dataloader = dict(
    batch_size=8,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=True),
    dataset=_dataset("train", train_pipeline),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=_dataset("val", test_pipeline),
)
test_dataloader = dict(val_dataloader, dataset=_dataset("test", test_pipeline))
val_evaluator = [dict(type="MaxMinMetric"), dict(type="SparseSegMetric", metrics=["Dice", "IoU"])]
test_evaluator = val_evaluator
del _dataset

# -- schedule (Belharbi et al.: SGD with Nesterov momentum 0.9, weight decay 1e-4, epoch-based t)
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="SGD", lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4),
)
param_scheduler = [dict(type="MultiStepLR", by_epoch=True, milestones=[40], gamma=0.1)]
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=max_epochs, val_interval=10)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
log_processor = dict(by_epoch=True)
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=10),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=True, interval=10),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"),
)
custom_hooks = [dict(type="SparseLossAnnealingHook")]  # drives the log-barrier t
