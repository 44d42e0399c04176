# Mask R-CNN R50-FPN 2x, SN / SN (backbone / head): ResNet-50 with SN in the
# stem, every bottleneck and the projection shortcuts, trained (nothing
# frozen); SN in the FPN, the 4conv1fc box head and the 4-conv mask head.
# Paper: 41.0 box AP, 36.5 mask AP.
_base_ = './_base_/mask-rcnn_r50_fpn_2x.py'
model = dict(
    backbone=dict(norm_cfg=_base_.sn, **_base_.learned_norm_backbone),
    neck=dict(norm_cfg=_base_.sn),
    roi_head=dict(
        bbox_head=dict(norm_cfg=_base_.sn, **_base_.box_head_4conv1fc),
        mask_head=dict(norm_cfg=_base_.sn)))
optim_wrapper = _base_.sn_optim_wrapper
