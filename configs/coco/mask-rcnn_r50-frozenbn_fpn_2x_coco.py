# Mask R-CNN R50-FPN 2x, BN-dagger / - (backbone / head): ResNet-50 with
# torchvision's ImageNet BN weights, BN frozen (statistics and affine: the
# paper's BN-dagger); mmdet's plain FPN, 2fc box head and mask head, not
# normalized. Paper: 38.6 box AP, 34.2 mask AP.
_base_ = './_base_/mask-rcnn_r50_fpn_2x.py'
model = dict(
    backbone=dict(norm_cfg=_base_.frozen_bn, norm_eval=True, frozen_stages=1),
    neck=dict(norm_cfg=None),
    roi_head=dict(
        bbox_head=dict(norm_cfg=None),
        mask_head=dict(norm_cfg=None)))
