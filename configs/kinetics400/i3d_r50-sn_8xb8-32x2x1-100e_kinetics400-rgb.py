# I3D R50 with Switchable Normalization, 8 GPUs x 8 clips: the authors'
# video setting, keep factor 0.997 = momentum 0.003 in PyTorch's convention.
_base_ = './_base_/i3d_r50_32x2x1_k400.py'
# No weight decay on the mixing weights: the rule of configs/_base_/
# sn_paramwise.py (a sibling base would clash with mmaction2's optim_wrapper).
from mmnorm.engine import sn_paramwise_cfg  # noqa: E402

model = dict(backbone=dict(norm_cfg=dict(type='SN', momentum=0.003)))
optim_wrapper = dict(paramwise_cfg=sn_paramwise_cfg())
