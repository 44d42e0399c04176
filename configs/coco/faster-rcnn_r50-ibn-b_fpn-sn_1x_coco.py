# Faster R-CNN R50-FPN 1x, IBN-b / SN (backbone / head): IBN-Net-b ResNet-50
# (IN stem, IN after the last block of stages 1-2; BN statistics frozen as in
# mmdet); SN in the FPN and the 4conv1fc box head. Paper: not published.
_base_ = './_base_/faster-rcnn_r50_fpn_1x.py'
model = dict(
    backbone=dict(type='ResNetIBNb', **_base_.ibn_backbone),
    neck=dict(norm_cfg=_base_.sn),
    roi_head=dict(
        bbox_head=dict(norm_cfg=_base_.sn, **_base_.box_head_4conv1fc)))
optim_wrapper = _base_.sn_optim_wrapper
