# Mask R-CNN R50-FPN 2x, SW / - (backbone / head): ResNet-50 with Switchable
# Whitening (BW+IW, groups of 16) in the stem and the 3x3-conv norm of every
# second block of stages 1-3, BN (per GPU) elsewhere, all trained; mmdet's
# plain FPN and 2fc box head. Paper: not published (no detection results).
_base_ = ['./_base_/mask-rcnn_r50_fpn_2x.py',
          './_base_/sw.py']
model = dict(backbone=_base_.sw_backbone, **_base_.plain_head)
optim_wrapper = _base_.sn_optim_wrapper
