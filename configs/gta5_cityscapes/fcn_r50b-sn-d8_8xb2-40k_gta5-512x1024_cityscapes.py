# FCN with SN in the whole ResNet-50 (the SN baseline of the SW rows), trained
# on GTA5 and tested on Cityscapes; the heads keep the base's SyncBN. The
# base's `sync_bn='torch'` turns SN into SyncSN in distributed runs, as it
# turns BN into SyncBN. Paper: not published.
_base_ = './_base_/gta5-512x1024_cityscapes.py'
model = dict(backbone=dict(norm_cfg=dict(type='SN', momentum=0.003)))
optim_wrapper = _base_.sn_optim_wrapper
