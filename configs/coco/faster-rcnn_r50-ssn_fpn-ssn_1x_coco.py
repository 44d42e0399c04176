# Faster R-CNN R50-FPN 1x, SSN / SSN (backbone / head): ResNet-50 with Sparse
# SN everywhere, trained (nothing frozen); Sparse SN in the FPN and the
# 4conv1fc box head. Paper: not published.
_base_ = './_base_/faster-rcnn_r50_fpn_1x.py'
model = dict(
    backbone=dict(norm_cfg=_base_.ssn, **_base_.learned_norm_backbone),
    neck=dict(norm_cfg=_base_.ssn),
    roi_head=dict(
        bbox_head=dict(norm_cfg=_base_.ssn, **_base_.box_head_4conv1fc)))
optim_wrapper = _base_.ssn_optim_wrapper
custom_hooks = _base_.ssn_custom_hooks
