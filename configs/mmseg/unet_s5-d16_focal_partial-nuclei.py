# Baseline: MMSeg's own FocalLoss (sigmoid focal loss, gamma 2, alpha 0.5) in place of CE.
# OneHotFocalLoss is MMSeg's FocalLoss fed one-hot targets: mmseg 1.2.2's FocalLoss fails on CPU
# with label maps (on CUDA, type="FocalLoss" gives the same loss).
_base_ = "./unet_s5-d16_ce_partial-nuclei.py"
focal = dict(type="OneHotFocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.5)
model = dict(
    decode_head=dict(loss_decode=dict(_delete_=True, loss_weight=1.0, **focal)),
    auxiliary_head=dict(loss_decode=dict(_delete_=True, loss_weight=0.4, **focal)),
)
del focal  # only a helper: keep it out of the dumped config
