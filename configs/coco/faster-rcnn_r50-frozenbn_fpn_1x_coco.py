# Faster R-CNN R50-FPN 1x, BN-dagger / - (backbone / head): ResNet-50 with
# torchvision's ImageNet BN weights, BN frozen (statistics and affine: the
# paper's BN-dagger); mmdet's plain FPN and 2fc box head, not normalized.
# Paper: 36.7 AP.
_base_ = './_base_/faster-rcnn_r50_fpn_1x.py'
model = dict(
    backbone=dict(norm_cfg=_base_.frozen_bn, norm_eval=True, frozen_stages=1),
    neck=dict(norm_cfg=None),
    roi_head=dict(
        bbox_head=dict(norm_cfg=None)))
