# Baseline: MMSeg's UNet (fcn_unet_s5-d16) with its stock cross-entropy, trained on partially
# annotated nuclei (unannotated nuclei are labelled 0, like background). The sparse_ext configs
# unet_s5-d16_{focal,ece,ece-focal,nnpu}_partial-nuclei.py differ from this one by the loss lines.
#   python tools/mmseg_train.py configs/mmseg/unet_s5-d16_ce_partial-nuclei.py \
#       --cfg-options data_root=data/hela
_base_ = [
    "mmseg::_base_/models/fcn_unet_s5-d16.py",
    "./_base_/datasets/partial_nuclei.py",
    "mmseg::_base_/default_runtime.py",
    "mmseg::_base_/schedules/schedule_20k.py",
]
custom_imports = dict(imports=["sparse_ext.mmseg"], allow_failed_imports=False)

norm_cfg = dict(type="BN", requires_grad=True)  # SyncBN -> BN: one CPU/GPU
data_preprocessor = dict(size={{_base_.crop_size}}, test_cfg=dict(size_divisor=16))
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(num_classes=2, norm_cfg=norm_cfg),
    auxiliary_head=dict(num_classes=2, norm_cfg=norm_cfg),
    test_cfg=dict(mode="slide", crop_size={{_base_.crop_size}}, stride=(170, 170)),
)
env_cfg = dict(cudnn_benchmark=False)
