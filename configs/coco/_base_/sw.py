# Switchable Whitening rows of configs/coco (variables only, like
# norms.py). The SW paper has no detection setting, so these rows share
# one setting with their baselines: the ResNet-50 backbone is trained
# (nothing frozen, normalizers in training mode, ImageNet weights from a
# local file: README.md), and the head is mmdet's plain FPN and 2fc box
# head, so the rows differ only in the backbone's normalizers.

# SW layers as in the authors' ImageNet ResNets (stem, and the 3x3-conv
# norm of every second block of stages 1-3), groups of 16 channels, BW+IW,
# 5 Newton iterations; momentum 0.01 (PyTorch convention) is the authors'
# layer default (keep 0.99).
sw_layer = dict(type='SW', num_pergroup=16, sw_type=2, T=5, momentum=0.01)
sync_sw_layer = dict(sw_layer, type='SyncSW')
trained_backbone = dict(frozen_stages=-1, norm_eval=False, init_cfg=None)
trained_bn = dict(type='BN', requires_grad=True)
trained_sync_bn = dict(type='SyncBN', requires_grad=True)
# SW backbone: the other norms are BN (per GPU) or SyncBN with SyncSW
sw_backbone = dict(type='ResNetSW', sw_cfg=sw_layer, norm_cfg=trained_bn,
                   **trained_backbone)
sync_sw_backbone = dict(type='ResNetSW', sw_cfg=sync_sw_layer,
                        norm_cfg=trained_sync_bn, **trained_backbone)
plain_head = dict(neck=dict(norm_cfg=None),
                  roi_head=dict(bbox_head=dict(norm_cfg=None)))
