# "Intra+inter-instance & high res" (Zhao, Hou et al.): the LSR loss plus cross-entropy on the pixels that
# have a high-res label. Those sparse labels are read per block from train/highres/<block>.png
# (class index per pixel, 255 = unlabelled; blocks without a file have none).
_base_ = "./unet_s5-d16_lsr-intra-inter_lsr-blocks.py"
model = dict(decode_head=dict(loss_decode=dict(highres_weight=1.0)))
train_dataloader = dict(
    dataset=dict(data_prefix=dict(img_path="train/blocks", highres_path="train/highres"))
)
