# Mask R-CNN R50-FPN 2x, IBN-b / GN (backbone / head): IBN-Net-b ResNet-50 (IN
# stem, IN after the last block of stages 1-2; BN statistics frozen as in
# mmdet); GN(32) in the FPN, the 4conv1fc box head and the 4-conv mask head.
# Paper: not published.
_base_ = './_base_/mask-rcnn_r50_fpn_2x.py'
model = dict(
    backbone=dict(type='ResNetIBNb', **_base_.ibn_backbone),
    neck=dict(norm_cfg=_base_.gn),
    roi_head=dict(
        bbox_head=dict(norm_cfg=_base_.gn, **_base_.box_head_4conv1fc),
        mask_head=dict(norm_cfg=_base_.gn)))
