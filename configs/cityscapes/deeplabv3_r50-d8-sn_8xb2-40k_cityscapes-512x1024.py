# DeepLabV3 R50-D8 on Cityscapes with SN (per-GPU statistics) in the
# backbone, the ASPP head and the auxiliary head (running averages with
# momentum 0.003, PyTorch convention; no weight decay on the mixing weights).
_base_ = './_base_/deeplabv3_r50-d8_cityscapes.py'
norm_cfg = dict(type='SN', momentum=0.003)
model = {part: dict(norm_cfg=norm_cfg)
         for part in ('backbone', 'decode_head', 'auxiliary_head')}
optim_wrapper = _base_.sn_optim_wrapper
