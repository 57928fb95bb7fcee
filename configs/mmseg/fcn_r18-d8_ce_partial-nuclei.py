# Baseline: MMSeg's FCN on a ResNetV1c-18 backbone (random init, no pretrained weights), CE.
_base_ = [
    "mmseg::_base_/models/fcn_r50-d8.py",
    "./_base_/datasets/partial_nuclei.py",
    "mmseg::_base_/default_runtime.py",
    "mmseg::_base_/schedules/schedule_20k.py",
]
custom_imports = dict(imports=["sparse_ext.mmseg"], allow_failed_imports=False)

norm_cfg = dict(type="BN", requires_grad=True)  # SyncBN -> BN: one CPU/GPU
data_preprocessor = dict(size={{_base_.crop_size}}, test_cfg=dict(size_divisor=8))
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(depth=18, norm_cfg=norm_cfg),
    decode_head=dict(in_channels=512, channels=128, num_classes=2, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=256, channels=64, num_classes=2, norm_cfg=norm_cfg),
    test_cfg=dict(mode="slide", crop_size={{_base_.crop_size}}, stride=(170, 170)),
)
env_cfg = dict(cudnn_benchmark=False)
