# FCN with the Switchable Whitening ResNet-50 (BW+IW in groups of 16 channels,
# in the stem and the 3x3-conv norm of every second block of stages 1-3),
# trained on GTA5 and tested on Cityscapes. The base's `sync_bn='torch'` turns
# the SW layers into SyncSW in distributed runs, as it turns BN into SyncBN.
# Paper: not published (the SW paper's GTA5 -> Cityscapes result is
# unsupervised domain adaptation with AdaptSegNet on VGG16, another setting).
_base_ = './_base_/gta5-512x1024_cityscapes.py'
model = dict(backbone=dict(
    type='ResNetSW',
    sw_cfg=dict(type='SW', num_pergroup=16, sw_type=2, T=5, momentum=0.01)))
optim_wrapper = _base_.sn_optim_wrapper
