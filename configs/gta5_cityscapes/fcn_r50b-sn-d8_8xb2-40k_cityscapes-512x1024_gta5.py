# FCN with SN in the whole ResNet-50 (the SN baseline of the SW rows), trained
# on Cityscapes and tested on GTA5; the heads keep the base's SyncBN. The
# base's `sync_bn='torch'` turns SN into SyncSN in distributed runs, as it
# turns BN into SyncBN. Paper: not published.
_base_ = './_base_/cityscapes-512x1024_gta5.py'
model = dict(backbone=dict(norm_cfg=dict(type='SN', momentum=0.003)))
optim_wrapper = _base_.sn_optim_wrapper
