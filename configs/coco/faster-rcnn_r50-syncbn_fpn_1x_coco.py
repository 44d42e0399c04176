# Faster R-CNN R50-FPN 1x, SyncBN / - (backbone / head): the baseline of the
# SyncSW rows: ResNet-50 with SyncBN trained, nothing frozen; mmdet's plain
# FPN and 2fc box head. Paper: not published.
_base_ = ['./_base_/faster-rcnn_r50_fpn_1x.py',
          './_base_/sw.py']
model = dict(
    backbone=dict(norm_cfg=_base_.trained_sync_bn,
                  **_base_.trained_backbone),
    **_base_.plain_head)
