# DeepLabV3 R50-D8 on Cityscapes with SyncBN (batch statistics over all GPUs)
# in the backbone, the ASPP head and the auxiliary head.
_base_ = './_base_/deeplabv3_r50-d8_cityscapes.py'
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = {part: dict(norm_cfg=norm_cfg)
         for part in ('backbone', 'decode_head', 'auxiliary_head')}
