# Exclusive cross-entropy (Panteli et al., ICCV 2021, Eq. 7): label 0 = background OR unannotated
# nucleus, kept as background only where the prediction is not confidently foreground (rho).
# Default schedule: constant rho 0.5 (sparse_ext's default, docs/losses_ece.md). Other schedules:
#   --cfg-options model.decode_head.loss_decode.schedule=paper_table2 \
#                 model.auxiliary_head.loss_decode.schedule=paper_table2
# Measured Dice per schedule and annotation fraction: docs/benchmarks/ (sparse-ext benchmark).
# SparseLossAnnealingHook feeds the training progress to annealed schedules.
_base_ = "./unet_s5-d16_ce_partial-nuclei.py"
model = dict(
    decode_head=dict(
        loss_decode=dict(_delete_=True, type="ExclusiveCrossEntropyLoss", loss_weight=1.0)
    ),
    auxiliary_head=dict(
        loss_decode=dict(_delete_=True, type="ExclusiveCrossEntropyLoss", loss_weight=0.4)
    ),
)
custom_hooks = [dict(type="SparseLossAnnealingHook")]
