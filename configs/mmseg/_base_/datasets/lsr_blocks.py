# Label super-resolution blocks (LSRBlockDataset), each split an output of
# `sparse-ext convert lsr-blocks IMAGES MASKS OUT`:
#   DATA/{train,val,test}/blocks/<stem>_r<row>_c<col>.png   image blocks
#   DATA/{train,val,test}/masks/<same>.png                 high-res class masks (evaluation only)
#   DATA/train/block_labels.csv                            "block,z" or "block,z_<class>,..."
#   DATA/train/table.json                                  {"classes", "labels", "eta", "rho"}
# Batches: 2 groups of 10 blocks sharing a label (Zhao, Hou et al.), GroupedBlockBatchSampler;
# each group's label drawn uniformly (the paper samples z first, Sect. 3.3; in the data's
# proportions the commonest label swamps the rest and the UNet under-segments, issue 13).
# Override the root with tools/mmseg_train.py --cfg-options data_root=DATA (also retargets the
# loss's table path; with MMSeg's own tools set the datasets' data_root and
# model.decode_head.loss_decode.table).
dataset_type = "LSRBlockDataset"
data_root = "data/lsr_blocks"
lsr_table = data_root + "/train/table.json"
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadBlockLabel"),  # block labels -> constant gt_seg_map for the LSR loss
    dict(type="RandomFlip", prob=[0.25, 0.25], direction=["horizontal", "vertical"]),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),  # high-res masks, evaluation only
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=20,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    batch_sampler=dict(type="GroupedBlockBatchSampler", group_size=10, label_sampling="uniform"),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file="train/block_labels.csv",
        table_file="train/table.json",
        data_prefix=dict(img_path="train/blocks"),
        pipeline=train_pipeline,
    ),
)


def _eval_loader(split):
    return dict(
        batch_size=1,
        num_workers=2,
        persistent_workers=True,
        sampler=dict(type="DefaultSampler", shuffle=False),
        dataset=dict(
            type=dataset_type,
            data_root=data_root,
            ann_file="",  # no block labels needed to evaluate
            table_file="train/table.json",
            data_prefix=dict(img_path=f"{split}/blocks", seg_map_path=f"{split}/masks"),
            test_mode=True,
            pipeline=test_pipeline,
        ),
    )


val_dataloader = _eval_loader("val")
test_dataloader = _eval_loader("test")
del _eval_loader
val_evaluator = [
    dict(type="IoUMetric", iou_metrics=["mIoU", "mDice"]),
    dict(type="SparseSegMetric", metrics=["Dice", "IoU"]),
]
test_evaluator = val_evaluator
