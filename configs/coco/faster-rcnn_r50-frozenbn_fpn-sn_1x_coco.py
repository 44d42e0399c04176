# Faster R-CNN R50-FPN 1x, BN-dagger / SN (backbone / head): ResNet-50 with
# torchvision's ImageNet BN weights, BN frozen (statistics and affine: the
# paper's BN-dagger); SN in the FPN and the 4conv1fc box head. Paper: 38.0 AP.
_base_ = './_base_/faster-rcnn_r50_fpn_1x.py'
model = dict(
    backbone=dict(norm_cfg=_base_.frozen_bn, norm_eval=True, frozen_stages=1),
    neck=dict(norm_cfg=_base_.sn),
    roi_head=dict(
        bbox_head=dict(norm_cfg=_base_.sn, **_base_.box_head_4conv1fc)))
optim_wrapper = _base_.sn_optim_wrapper
