# The normalizers of the COCO rows and the settings that come with them.
# Variables only: the detector fragments next to this file inherit it, and
# every row config writes them into each component by name
# (`_base_.sn`, ...). A top-level `norm_cfg` would change nothing, because
# mmdet's base configs have already copied theirs into the components.
_base_ = ['../../_base_/sn_paramwise.py', '../../_base_/ssn_recipe.py']

# SN family. The authors' detection code keeps 0.997 of the running
# statistics per iteration (their "momentum"), i.e. momentum=0.003 in
# PyTorch's convention, which mmnorm uses.
sn = dict(type='SN', momentum=0.003)
ssn = dict(type='SSN', momentum=0.003)
sync_sn = dict(type='SyncSN', momentum=0.003)
gn = dict(type='GN', num_groups=32, requires_grad=True)
# BN-dagger of the paper: ImageNet BN with statistics and affine frozen
frozen_bn = dict(type='BN', requires_grad=False)
# the BN part of IBN backbones: fine-tuned affine, frozen statistics
# (mmdet's usual ImageNet-BN fine-tuning, with norm_eval=True)
ibn_bn = dict(type='BN', requires_grad=True)

# A backbone that learns its normalizers (SN, SSN, SyncSN): no stage
# frozen, normalizers in training mode. init_cfg=None: no ImageNet weights
# and no download unless a child config points init_cfg at a local file
# (see README.md); the paper started from ImageNet-pretrained SN weights.
learned_norm_backbone = dict(frozen_stages=-1, norm_eval=False,
                             init_cfg=None)
# IBN-Net backbones: mmdet's fine-tuning defaults, offline by default
# (the authors' ImageNet weights are a download away: README.md)
ibn_backbone = dict(norm_cfg=ibn_bn, norm_eval=True, frozen_stages=1,
                    init_cfg=None)
# GN backbone: Detectron's ImageNet GN ResNet-50 (the weights mmdet's GN
# configs use), trained on caffe-style inputs: BGR, mean only
gn_backbone = dict(
    frozen_stages=1,
    init_cfg=dict(type='Pretrained',
                  checkpoint='open-mmlab://detectron/resnet50_gn'))
caffe_inputs = dict(mean=[103.530, 116.280, 123.675], std=[1.0, 1.0, 1.0],
                    bgr_to_rgb=False)

# Every normalized head uses the 4conv1fc box head of the GN and SN papers
# (mmdet's default 2fc head has no convolution to normalize).
box_head_4conv1fc = dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256)

# Optimizer additions (mmdet's SGD, lr 0.02, stays), shared by all configs
# from configs/_base_/: `sn_optim_wrapper` (no weight decay on the mixing
# weights) for SN rows, `ssn_optim_wrapper` + `ssn_custom_hooks` (mixing
# weights at lr/10 without decay, their joint gradient norm clipped at 1.0,
# the SparsestMax radius growing from 0 to 1 over training) for SSN rows.

# Kalman Normalization (docs/kalman_norm.md). 2 images per GPU is the
# paper's micro-batch regime (2 images per statistic): prior weight
# p = 0.9. ResNetKN chains the backbone's KN layers; KalmanChainHook chains
# the ConvModules of the FPN and the heads by data flow. Offline by default:
# BN ImageNet weights load into ResNetKN unchanged (README.md).
kn = dict(type='KN', prior_weight=0.9)
kn_backbone = dict(type='ResNetKN', frozen_stages=-1, norm_eval=False,
                   init_cfg=None)
kn_custom_hooks = [dict(type='KalmanChainHook')]
