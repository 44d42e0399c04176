# No weight decay on SN's mixing weights (lambdas), as in the authors'
# detection and segmentation code; the same as
# mmnorm.engine.sn_paramwise_cfg() in Python. A variable, not an
# `optim_wrapper` (mmengine refuses a key that two bases define), merged
# into the toolkit's optimizer settings by the config that inherits it:
#   _base_ = ['mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
#             '../_base_/sn_paramwise.py']
#   optim_wrapper = _base_.sn_optim_wrapper
sn_optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={
        '.mean_weight': dict(decay_mult=0.0),
        '.var_weight': dict(decay_mult=0.0),
    }))
