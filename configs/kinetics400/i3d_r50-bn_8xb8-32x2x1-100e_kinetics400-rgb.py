# I3D R50 with BatchNorm (per-GPU statistics), 8 GPUs x 8 clips.
_base_ = './_base_/i3d_r50_32x2x1_k400.py'
model = dict(backbone=dict(norm_cfg=dict(type='BN3d', requires_grad=True)))
