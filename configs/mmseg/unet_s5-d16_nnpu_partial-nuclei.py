# Non-negative PU loss on pixels (Zhao et al., MICCAI 2021, Eq. 9-12): annotated pixels are the
# positives, label-0 pixels the unlabeled set; prior = expected fraction of nucleus pixels.
#   --cfg-options model.decode_head.loss_decode.prior=0.2 model.auxiliary_head.loss_decode.prior=0.2
_base_ = "./unet_s5-d16_ce_partial-nuclei.py"
nnpu = dict(type="NonNegativePULoss", prior=0.15, mode="detection", nonnegative="clamp")
model = dict(
    decode_head=dict(loss_decode=dict(_delete_=True, loss_weight=1.0, **nnpu)),
    auxiliary_head=dict(loss_decode=dict(_delete_=True, loss_weight=0.4, **nnpu)),
)
del nnpu  # only a helper: keep it out of the dumped config
