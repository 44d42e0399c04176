# I3D R50 with BatchNorm (per-GPU statistics), 8 GPUs x 4 clips.
_base_ = './_base_/i3d_r50_32x2x1_k400_4clips.py'
model = dict(backbone=dict(norm_cfg=dict(type='BN3d', requires_grad=True)))
