# Exclusive cross-entropy in MMSeg's FCN on ResNetV1c-18 (random init), the keep probability from
# the annotated fraction and rho's warm-up as in unet_s5-d16_ece_partial-nuclei.py.
_base_ = "./fcn_r18-d8_ce_partial-nuclei.py"
model = dict(
    decode_head=dict(
        loss_decode=dict(
            _delete_=True, type="ExclusiveCrossEntropyLoss", schedule="ce_warmup", loss_weight=1.0
        )
    ),
    auxiliary_head=dict(
        loss_decode=dict(
            _delete_=True, type="ExclusiveCrossEntropyLoss", schedule="ce_warmup", loss_weight=0.4
        )
    ),
)
custom_hooks = [dict(type="SparseLossAnnealingHook")]
