# I3D R50 with Switchable Normalization, 8 GPUs x 8 clips: the authors'
# video setting, keep factor 0.997 = momentum 0.003 in PyTorch's convention.
_base_ = ['./_base_/i3d_r50_32x2x1_k400.py', '../_base_/sn_paramwise.py']
# No weight decay on the mixing weights (configs/_base_/sn_paramwise.py).
model = dict(backbone=dict(norm_cfg=dict(type='SN', momentum=0.003)))
optim_wrapper = _base_.sn_optim_wrapper
