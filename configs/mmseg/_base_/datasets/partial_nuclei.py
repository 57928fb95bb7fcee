# Partially annotated nuclei, in the layout `sparse-ext data fetch` writes (PartialNucleiDataset):
#   DATA/images/{train,val,test}/<stem>.png     uint8 grayscale (loaded as 3 channels)
#   DATA/labels/frac{NNN}/train/<stem>.png      sparse: 1 annotated nucleus, 0 background OR
#                                               unannotated (NNN = 010 .. 090, 100)
#   DATA/labels/full/{val,test}/<stem>.png      exhaustive, for evaluation
#   DATA/instances/{val,test}/<stem>.tif        instance maps (AJI, object F1)
# Overrides:  --cfg-options data_root=DATA  (tools/mmseg_train.py / mmseg_test.py retarget every
#             path under the old root; with MMSeg's own tools set train_dataloader.dataset.data_root,
#             val_dataloader.dataset.data_root and test_dataloader.dataset.data_root)
#             train_dataloader.dataset.data_prefix.seg_map_path=labels/frac010/train
dataset_type = "PartialNucleiDataset"
data_root = "data/hela"
train_labels = "labels/frac030/train"
crop_size = (256, 256)
meta_keys = (
    "img_path",
    "seg_map_path",
    "inst_path",
    "ori_shape",
    "img_shape",
    "pad_shape",
    "scale_factor",
    "flip",
    "flip_direction",
    "reduce_zero_label",
)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomResize", scale=(1100, 700), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size),
    dict(type="RandomFlip", prob=[0.25, 0.25], direction=["horizontal", "vertical"]),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="PackSegInputs", meta_keys=meta_keys),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="images/train", seg_map_path=train_labels),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(
            img_path="images/val", seg_map_path="labels/full/val", inst_path="instances/val"
        ),
        pipeline=test_pipeline,
    ),
)
test_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(
            img_path="images/test", seg_map_path="labels/full/test", inst_path="instances/test"
        ),
        pipeline=test_pipeline,
    ),
)
val_evaluator = [
    dict(type="IoUMetric", iou_metrics=["mIoU", "mDice"]),
    dict(type="SparseSegMetric", metrics=["Dice", "IoU", "AJI", "ObjF1"]),
]
test_evaluator = val_evaluator
