# The SN paper's setting (FCN-c1 R50b-D8) on Cityscapes with GN (32 groups)
# in the backbone, the FCN head and the auxiliary head.
_base_ = './_base_/fcn-c1_r50b-d8_cityscapes.py'
norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
model = {part: dict(norm_cfg=norm_cfg)
         for part in ('backbone', 'decode_head', 'auxiliary_head')}
