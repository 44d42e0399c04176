# Mask R-CNN R50-FPN 2x, GN / GN (backbone / head): ResNet-50 with GN(32), from
# Detectron's ImageNet GN weights (caffe-style inputs); GN(32) in the FPN, the
# 4conv1fc box head and the 4-conv mask head. Paper: 40.2 box AP, 35.7 mask AP.
_base_ = './_base_/mask-rcnn_r50_fpn_2x.py'
model = dict(
    data_preprocessor=_base_.caffe_inputs,
    backbone=dict(norm_cfg=_base_.gn, **_base_.gn_backbone),
    neck=dict(norm_cfg=_base_.gn),
    roi_head=dict(
        bbox_head=dict(norm_cfg=_base_.gn, **_base_.box_head_4conv1fc),
        mask_head=dict(norm_cfg=_base_.gn)))
