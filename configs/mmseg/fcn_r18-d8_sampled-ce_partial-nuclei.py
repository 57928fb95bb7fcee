# The recommended recipe (unet_s5-d16_sampled-ce_partial-nuclei.py) in MMSeg's FCN on
# ResNetV1c-18 (random init): the keep probability from the annotated fraction f.
_base_ = "./fcn_r18-d8_ce_partial-nuclei.py"
model = dict(
    decode_head=dict(
        loss_decode=dict(_delete_=True, type="SampledCrossEntropyLoss", loss_weight=1.0)
    ),
    auxiliary_head=dict(
        loss_decode=dict(_delete_=True, type="SampledCrossEntropyLoss", loss_weight=0.4)
    ),
)
custom_hooks = [dict(type="SparseLossAnnealingHook")]
