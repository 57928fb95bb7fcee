# The recommended partial-annotation recipe: cross-entropy with the unannotated pixels kept as
# background with the probability that the annotated fraction f gives (background_keep_prob; ECE's
# reference-code background sampling without the exclusion, Panteli et al., ICCV 2021). On HeLa
# and the H&E set it matched or beat ECE (docs/benchmarks/README.md).
# f comes from the training data (PartialNucleiDataset: labels/frac<NNN>, or the COCO file's
# info.sparse_fraction; SparseLossAnnealingHook hands it to the loss); set it where the data do
# not record it, e.g. --cfg-options model.decode_head.loss_decode.annotated_fraction=0.3
#               model.auxiliary_head.loss_decode.annotated_fraction=0.3
_base_ = "./unet_s5-d16_ce_partial-nuclei.py"
model = dict(
    decode_head=dict(
        loss_decode=dict(_delete_=True, type="SampledCrossEntropyLoss", loss_weight=1.0)
    ),
    auxiliary_head=dict(
        loss_decode=dict(_delete_=True, type="SampledCrossEntropyLoss", loss_weight=0.4)
    ),
)
custom_hooks = [dict(type="SparseLossAnnealingHook")]
