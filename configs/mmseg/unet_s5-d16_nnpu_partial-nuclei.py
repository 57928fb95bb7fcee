# Non-negative PU loss on pixels (Zhao, Pang et al., MICCAI 2021, Eq. 9-12): annotated pixels are
# the positives, label-0 pixels the unlabeled set. The prior comes from the annotated fraction f
# (read from the training data like the ECE recipe; or annotated_fraction=...) and the share of
# labelled pixels: the sampled prior pi_b = Np/N + (Nu/N) pi_u. A fixed prior as in the paper:
#   --cfg-options model.decode_head.loss_decode.prior=0.2 model.auxiliary_head.loss_decode.prior=0.2
_base_ = "./unet_s5-d16_ce_partial-nuclei.py"
nnpu = dict(type="NonNegativePULoss", mode="detection", nonnegative="clamp")
model = dict(
    decode_head=dict(loss_decode=dict(_delete_=True, loss_weight=1.0, **nnpu)),
    auxiliary_head=dict(loss_decode=dict(_delete_=True, loss_weight=0.4, **nnpu)),
)
del nnpu  # only a helper: keep it out of the dumped config
