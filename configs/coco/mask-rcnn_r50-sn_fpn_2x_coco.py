# Mask R-CNN R50-FPN 2x, SN / - (backbone / head): the SN baseline of the SW
# rows: ResNet-50 with SN everywhere, trained; mmdet's plain FPN and 2fc box
# head. Paper: not published (the SN paper's SN rows normalize the head too).
_base_ = ['./_base_/mask-rcnn_r50_fpn_2x.py',
          './_base_/sw.py']
model = dict(
    backbone=dict(norm_cfg=_base_.sn, **_base_.learned_norm_backbone),
    **_base_.plain_head)
optim_wrapper = _base_.sn_optim_wrapper
