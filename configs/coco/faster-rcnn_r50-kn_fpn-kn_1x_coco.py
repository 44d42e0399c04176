# Faster R-CNN R50-FPN 1x, KN / KN (backbone / head): ResNet-50 with Kalman
# Normalization chained through stem, blocks and projection shortcuts
# (ResNetKN), trained; KN in the FPN and the 4conv1fc box head, chained by
# data flow (KalmanChainHook). Paper: not published (KN was evaluated on
# ImageNet and CIFAR only).
_base_ = './_base_/faster-rcnn_r50_fpn_1x.py'
model = dict(
    backbone=dict(norm_cfg=_base_.kn, **_base_.kn_backbone),
    neck=dict(norm_cfg=_base_.kn),
    roi_head=dict(
        bbox_head=dict(norm_cfg=_base_.kn, **_base_.box_head_4conv1fc)))
custom_hooks = _base_.kn_custom_hooks
