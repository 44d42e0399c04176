# Mask R-CNN R50-FPN 2x, SyncSW / - (backbone / head): the SW ResNet-50 with
# the BW statistics synchronized over all GPUs (SyncSW) and SyncBN
# elsewhere, all trained; mmdet's plain FPN and 2fc box head.
# Paper: not published.
_base_ = ['./_base_/mask-rcnn_r50_fpn_2x.py',
          './_base_/sw.py']
model = dict(backbone=_base_.sync_sw_backbone, **_base_.plain_head)
optim_wrapper = _base_.sn_optim_wrapper
