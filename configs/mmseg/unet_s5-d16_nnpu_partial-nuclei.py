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
# hands the data's f (info.sparse_fraction) to the losses before training; without it they fall
# back to f = 0.2 with a warning, which at a true 10 % halves pi_u and the model collapses to
# background (Dice 0.000 on every seed of both datasets, history/seg_*_nnpu_fallback_f.csv)
custom_hooks = [dict(type="SparseLossAnnealingHook")]
