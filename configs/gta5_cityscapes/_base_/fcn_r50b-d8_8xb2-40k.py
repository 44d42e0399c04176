# Shared by the GTA5 <-> Cityscapes configs: mmseg's FCN R50-D8 on
# Cityscapes crops (512x1024, 40k iterations) with the 7x7-stem ResNet-50
# ("r50b", the stem of the IBN-Net backbones and their ImageNet weights),
# on 8 GPUs x 2 images. All BN layers are synchronized, including the BN
# half of IBN-a layers (plain BatchNorm2d, turned into SyncBatchNorm by
# `sync_bn` in distributed runs).
_base_ = [
    'mmseg::fcn/fcn_r50-d8_4xb2-40k_cityscapes-512x1024.py',
    '../../ade20k/_base_/mmnorm_seg.py'
]
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    pretrained=None,  # offline by default; README: local ImageNet weights
    backbone=dict(type='ResNet', norm_cfg=norm_cfg),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
sync_bn = 'torch'
train_dataloader = dict(batch_size=2)
