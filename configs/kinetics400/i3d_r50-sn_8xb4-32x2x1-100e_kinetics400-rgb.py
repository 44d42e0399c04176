# I3D R50 with Switchable Normalization (momentum 0.003, lambdas without
# weight decay, see the 8xb8 config), 8 GPUs x 4 clips.
_base_ = ['./_base_/i3d_r50_32x2x1_k400_4clips.py',
          '../_base_/sn_paramwise.py']
model = dict(backbone=dict(norm_cfg=dict(type='SN', momentum=0.003)))
optim_wrapper = _base_.sn_optim_wrapper
