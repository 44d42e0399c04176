# Mask R-CNN R50-FPN 2x, SyncSN / SyncSN (backbone / head): ResNet-50 with
# synchronized SN (BN branch over all GPUs), trained; synchronized SN in the
# FPN, the 4conv1fc box head and the 4-conv mask head. Paper: not published.
_base_ = './_base_/mask-rcnn_r50_fpn_2x.py'
model = dict(
    backbone=dict(norm_cfg=_base_.sync_sn, **_base_.learned_norm_backbone),
    neck=dict(norm_cfg=_base_.sync_sn),
    roi_head=dict(
        bbox_head=dict(norm_cfg=_base_.sync_sn, **_base_.box_head_4conv1fc),
        mask_head=dict(norm_cfg=_base_.sync_sn)))
optim_wrapper = _base_.sn_optim_wrapper
