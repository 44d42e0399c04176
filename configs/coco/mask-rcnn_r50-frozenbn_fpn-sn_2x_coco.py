# Mask R-CNN R50-FPN 2x, BN-dagger / SN (backbone / head): ResNet-50 with
# torchvision's ImageNet BN weights, BN frozen (statistics and affine: the
# paper's BN-dagger); SN in the FPN, the 4conv1fc box head and the 4-conv mask
# head. Paper: 40.0 box AP, 34.8 mask AP.
_base_ = './_base_/mask-rcnn_r50_fpn_2x.py'
model = dict(
    backbone=dict(norm_cfg=_base_.frozen_bn, norm_eval=True, frozen_stages=1),
    neck=dict(norm_cfg=_base_.sn),
    roi_head=dict(
        bbox_head=dict(norm_cfg=_base_.sn, **_base_.box_head_4conv1fc),
        mask_head=dict(norm_cfg=_base_.sn)))
optim_wrapper = _base_.sn_optim_wrapper
