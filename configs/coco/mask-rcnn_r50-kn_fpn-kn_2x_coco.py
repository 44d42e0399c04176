# Mask R-CNN R50-FPN 2x, KN / KN (backbone / head): ResNetKN backbone
# (Kalman Normalization chained through the whole ResNet), KN in the FPN,
# the 4conv1fc box head and the 4-conv mask head, chained by data flow
# (KalmanChainHook). Paper: not published.
_base_ = './_base_/mask-rcnn_r50_fpn_2x.py'
model = dict(
    backbone=dict(norm_cfg=_base_.kn, **_base_.kn_backbone),
    neck=dict(norm_cfg=_base_.kn),
    roi_head=dict(
        bbox_head=dict(norm_cfg=_base_.kn, **_base_.box_head_4conv1fc),
        mask_head=dict(norm_cfg=_base_.kn)))
custom_hooks = _base_.kn_custom_hooks
