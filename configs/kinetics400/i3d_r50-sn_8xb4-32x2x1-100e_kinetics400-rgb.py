# I3D R50 with Switchable Normalization (momentum 0.003, lambdas without
# weight decay, see the 8xb8 config), 8 GPUs x 4 clips.
_base_ = './_base_/i3d_r50_32x2x1_k400_4clips.py'
from mmnorm.engine import sn_paramwise_cfg  # noqa: E402

model = dict(backbone=dict(norm_cfg=dict(type='SN', momentum=0.003)))
optim_wrapper = dict(paramwise_cfg=sn_paramwise_cfg())
