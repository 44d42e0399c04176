# Faster R-CNN R50-FPN 1x, SN / SN (backbone / head): ResNet-50 with SN in the
# stem, every bottleneck and the projection shortcuts, trained (nothing
# frozen); SN in the FPN and the 4conv1fc box head. Paper: 39.3 AP.
_base_ = './_base_/faster-rcnn_r50_fpn_1x.py'
model = dict(
    backbone=dict(norm_cfg=_base_.sn, **_base_.learned_norm_backbone),
    neck=dict(norm_cfg=_base_.sn),
    roi_head=dict(
        bbox_head=dict(norm_cfg=_base_.sn, **_base_.box_head_4conv1fc)))
optim_wrapper = _base_.sn_optim_wrapper
