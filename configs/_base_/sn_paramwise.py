# No weight decay on SN's mixing weights (lambdas), as in the authors'
# detection and segmentation code. Inherit it next to a toolkit config:
#   _base_ = ['mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
#             '../_base_/sn_paramwise.py']
# Same as mmnorm.engine.sn_paramwise_cfg() in Python.
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={
        '.mean_weight': dict(decay_mult=0.0),
        '.var_weight': dict(decay_mult=0.0),
    }))
