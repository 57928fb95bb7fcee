# Exclusive cross-entropy with the focal term on unannotated pixels (Panteli et al., ICCV 2021,
# Eq. 8), the keep probability from the annotated fraction and rho's warm-up ("ce_warmup") as in
# unet_s5-d16_ece_partial-nuclei.py.
_base_ = "./unet_s5-d16_ce_partial-nuclei.py"
ece_focal = dict(
    type="ExclusiveCrossEntropyLoss", schedule="ce_warmup", focal_alpha=1.0, focal_gamma=2.0
)
model = dict(
    decode_head=dict(loss_decode=dict(_delete_=True, loss_weight=1.0, **ece_focal)),
    auxiliary_head=dict(loss_decode=dict(_delete_=True, loss_weight=0.4, **ece_focal)),
)
custom_hooks = [dict(type="SparseLossAnnealingHook")]
del ece_focal  # only a helper: keep it out of the dumped config
