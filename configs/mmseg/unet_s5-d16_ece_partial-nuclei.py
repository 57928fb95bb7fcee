# Exclusive cross-entropy (Panteli et al., ICCV 2021, Eq. 7): label 0 = background OR unannotated
# nucleus, kept as background only where the prediction is not confidently foreground (rho), and
# kept with the probability that the annotated fraction f gives (background_keep_prob). rho
# follows the "ce_warmup" schedule: 1 (no exclusion) for the first quarter of training, then 0.68
# (the end of the paper's Table 2 schedule); with a constant rho an untrained network (scores
# near 0.5) excludes background from the first step and can over-segment for good.
# f comes from the training data (PartialNucleiDataset: labels/frac<NNN>, or the COCO file's
# info.sparse_fraction; SparseLossAnnealingHook hands it to the loss); set it where the data do
# not record it, e.g. --cfg-options model.decode_head.loss_decode.annotated_fraction=0.3
#               model.auxiliary_head.loss_decode.annotated_fraction=0.3
# ECE as published (every unannotated pixel kept, rho 0.5): sampling_schedule=1.0, schedule=0.5 on
# both heads; other rho schedules: schedule=paper_table2.
# Measured Dice: docs/benchmarks/ (sparse-ext benchmark).
_base_ = "./unet_s5-d16_ce_partial-nuclei.py"
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
