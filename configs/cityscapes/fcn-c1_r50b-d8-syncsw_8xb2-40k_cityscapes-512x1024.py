# The SN paper's setting (FCN-c1 R50b-D8) on cityscapes with the
# Switchable Whitening ResNet-50: SyncSW (BW statistics over all GPUs) in
# the stem and the 3x3-conv norm of every second block of stages 1-3 (the
# authors' placement;
# groups of 16 channels, BW+IW, T=5, momentum 0.01 in PyTorch's
# convention), SyncBN in the rest of the backbone and in both heads, as in
# the SyncBN row; no weight decay on the mixing weights.
# Paper: not published (the SW paper's segmentation uses its own setting).
_base_ = './_base_/fcn-c1_r50b-d8_cityscapes.py'
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    backbone=dict(
        type='ResNetSW', norm_cfg=norm_cfg,
        sw_cfg=dict(type='SyncSW', num_pergroup=16, sw_type=2, T=5,
                    momentum=0.01)),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
optim_wrapper = _base_.sn_optim_wrapper
