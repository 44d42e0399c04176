# Faster R-CNN R50-FPN 1x, GN / GN (backbone / head): ResNet-50 with GN(32),
# from Detectron's ImageNet GN weights (caffe-style inputs); GN(32) in the FPN
# and the 4conv1fc box head. Paper: 38.2 AP.
_base_ = './_base_/faster-rcnn_r50_fpn_1x.py'
model = dict(
    data_preprocessor=_base_.caffe_inputs,
    backbone=dict(norm_cfg=_base_.gn, **_base_.gn_backbone),
    neck=dict(norm_cfg=_base_.gn),
    roi_head=dict(
        bbox_head=dict(norm_cfg=_base_.gn, **_base_.box_head_4conv1fc)))
