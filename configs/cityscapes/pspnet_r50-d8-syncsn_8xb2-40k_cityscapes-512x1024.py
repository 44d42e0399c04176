# PSPNet R50-D8 on Cityscapes with SyncSN (SN whose BN branch uses the
# statistics of all GPUs) in the backbone, the PSP head and the auxiliary
# head (momentum 0.003; no weight decay on the mixing weights).
_base_ = './_base_/pspnet_r50-d8_cityscapes.py'
norm_cfg = dict(type='SyncSN', momentum=0.003)
model = {part: dict(norm_cfg=norm_cfg)
         for part in ('backbone', 'decode_head', 'auxiliary_head')}
optim_wrapper = _base_.sn_optim_wrapper
