# I3D R50 with GroupNorm, 32 groups as in the paper, 8 GPUs x 8 clips.
# 'GN3d' (from mmnorm.mmaction) is nn.GroupNorm named `bn`, the name under
# which mmaction2's ResNet3d inflates ImageNet weights; 'GN' would fail.
_base_ = './_base_/i3d_r50_32x2x1_k400.py'
gn = dict(type='GN3d', num_groups=32, requires_grad=True)
model = dict(backbone=dict(norm_cfg=gn))
