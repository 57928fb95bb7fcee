# Label super-resolution (Zhao, Hou et al., "Label super resolution with inter-instance loss"):
# MMSeg's UNet trained from one low-resolution label per image block and the (eta, rho) table,
# intra+inter-instance statistics matching (Eq. 11), 2 groups of 10 same-label blocks per batch.
# Variants (differ by the loss line): unet_s5-d16_lsr-{intra,inter}_lsr-blocks.py, and
# unet_s5-d16_lsr-intra-inter-highres_lsr-blocks.py ("& high res": plus CE on labelled pixels).
# The stock FCN head passes the block-label map (LoadBlockLabel) to LabelSuperResolutionLoss;
# its acc_seg log entry is meaningless in LSR training.
_base_ = [
    "mmseg::_base_/models/fcn_unet_s5-d16.py",
    "./_base_/datasets/lsr_blocks.py",
    "mmseg::_base_/default_runtime.py",
    "mmseg::_base_/schedules/schedule_20k.py",
]
custom_imports = dict(imports=["sparse_ext.mmseg"], allow_failed_imports=False)

norm_cfg = dict(type="BN", requires_grad=True)  # SyncBN -> BN: one CPU/GPU
data_preprocessor = dict(size_divisor=16, test_cfg=dict(size_divisor=16))
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(
        num_classes=2,  # = the table's classes
        norm_cfg=norm_cfg,
        loss_decode=dict(
            _delete_=True,
            type="LabelSuperResolutionLoss",
            table={{_base_.lsr_table}},
            mode="intra_inter",
            alpha=1.0,
            loss_weight=1.0,
        ),
    ),
    auxiliary_head=None,
    test_cfg=dict(mode="whole"),
)
env_cfg = dict(cudnn_benchmark=False)
