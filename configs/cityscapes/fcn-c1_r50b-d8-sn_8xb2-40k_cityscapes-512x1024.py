# The SN paper's setting (FCN-c1 R50b-D8) on Cityscapes with SN (per-GPU
# statistics) in the backbone, the FCN head and the auxiliary head (running
# averages with momentum 0.003, PyTorch convention; no weight decay on the
# mixing weights).
_base_ = './_base_/fcn-c1_r50b-d8_cityscapes.py'
norm_cfg = dict(type='SN', momentum=0.003)
model = {part: dict(norm_cfg=norm_cfg)
         for part in ('backbone', 'decode_head', 'auxiliary_head')}
optim_wrapper = _base_.sn_optim_wrapper
