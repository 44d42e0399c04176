# I3D R50 with GroupNorm (32 groups; GN3d: see the 8xb8 config), 8 GPUs x
# 4 clips.
_base_ = './_base_/i3d_r50_32x2x1_k400_4clips.py'
gn = dict(type='GN3d', num_groups=32, requires_grad=True)
model = dict(backbone=dict(norm_cfg=gn))
