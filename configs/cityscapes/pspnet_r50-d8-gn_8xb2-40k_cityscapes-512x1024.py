# PSPNet R50-D8 on Cityscapes with GN (32 groups) in the backbone, the PSP
# head and the auxiliary head.
_base_ = './_base_/pspnet_r50-d8_cityscapes.py'
norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
model = {part: dict(norm_cfg=norm_cfg)
         for part in ('backbone', 'decode_head', 'auxiliary_head')}
