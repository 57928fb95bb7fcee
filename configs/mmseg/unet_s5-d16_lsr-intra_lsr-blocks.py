# Label super-resolution, intra-instance statistics matching (Zhao, Hou et al.).
_base_ = "./unet_s5-d16_lsr-intra-inter_lsr-blocks.py"
model = dict(decode_head=dict(loss_decode=dict(mode="intra")))
