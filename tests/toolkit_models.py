"""Build real toolkit models from their bundled configs with SN everywhere,
and run one training step on tiny synthetic inputs (CPU)."""
from __future__ import annotations

import importlib
import os

import torch
from mmengine.config import Config

SN = dict(type='SN', momentum=0.003)


def bundled_config(name: str) -> Config:
    """Load ``'mmdet::path.py'``-style configs bundled with a toolkit."""
    package, rel = name.split('::')
    module = importlib.import_module(package)
    root = os.path.join(os.path.dirname(module.__file__), '.mim', 'configs')
    return Config.fromfile(os.path.join(root, rel))


def _no_pretrained(cfg):
    cfg.model.backbone.init_cfg = None
    return cfg


def build_in_scope(toolkit: str, cfg: dict):
    """Build ``cfg`` from ``toolkit``'s MODELS registry in its own scope
    (an earlier test or Runner may have left another default scope)."""
    from mmengine.registry import DefaultScope
    importlib.import_module(f'mmnorm.{toolkit}')
    registry = importlib.import_module(f'{toolkit}.registry').MODELS
    with DefaultScope.overwrite_default_scope(toolkit):
        return registry.build(cfg)


def detector_cfg(kind: str, backbone_norm: dict = SN,
                 norm_eval: bool = False) -> Config:
    """Faster R-CNN R50-FPN or Mask R-CNN R50-FPN with SN in backbone, FPN,
    a 4conv1fc box head and the mask head."""
    name = {'faster': 'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
            'mask': 'mask_rcnn/mask-rcnn_r50_fpn_2x_coco.py'}[kind]
    cfg = _no_pretrained(bundled_config(f'mmdet::{name}'))
    model = cfg.model
    model.backbone.norm_cfg = backbone_norm
    model.backbone.norm_eval = norm_eval
    model.backbone.frozen_stages = -1  # the paper trains SN backbones
    model.neck.norm_cfg = SN
    model.roi_head.bbox_head = dict(
        model.roi_head.bbox_head, type='Shared4Conv1FCBBoxHead',
        conv_out_channels=256, norm_cfg=SN)
    if kind == 'mask':
        model.roi_head.mask_head.norm_cfg = SN
    return cfg


def segmentor_cfg() -> Config:
    cfg = bundled_config(
        'mmseg::pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py')
    model = cfg.model
    model.pretrained = None
    model.backbone.norm_cfg = SN
    model.decode_head.norm_cfg = SN
    model.auxiliary_head.norm_cfg = SN
    model.data_preprocessor.size = (64, 64)
    return cfg


def recognizer_cfg() -> Config:
    cfg = bundled_config(
        'mmaction::recognition/i3d/'
        'i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py')
    cfg.model.backbone.pretrained = None
    cfg.model.backbone.pretrained2d = False
    cfg.model.backbone.norm_cfg = SN
    return cfg


def detection_batch(with_mask: bool, batch_size: int = 2):
    from mmdet.testing import demo_mm_inputs
    return demo_mm_inputs(batch_size=batch_size, image_shapes=(3, 96, 128),
                          num_items=[2] * batch_size, num_classes=80,
                          with_mask=with_mask)


def segmentation_batch(batch_size: int = 2):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    inputs, samples = [], []
    for _ in range(batch_size):
        inputs.append(torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8))
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, 19, (1, 64, 64)))
        sample.set_metainfo(dict(img_shape=(64, 64), ori_shape=(64, 64),
                                 pad_shape=(64, 64)))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def recognition_batch(batch_size: int = 2):
    from mmaction.structures import ActionDataSample
    inputs, samples = [], []
    for i in range(batch_size):
        inputs.append(torch.randint(0, 255, (1, 3, 8, 32, 32),
                                    dtype=torch.uint8))
        samples.append(ActionDataSample().set_gt_label(torch.tensor([i])))
    return dict(inputs=inputs, data_samples=samples)


def train_step(model, batch) -> torch.Tensor:
    """One forward/backward in loss mode; returns the total loss."""
    model.train()
    data = model.data_preprocessor(batch, True)
    losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    model.zero_grad()
    loss.backward()
    return loss


def ibn_detector_cfg() -> Config:
    """Faster R-CNN R50-FPN with mmnorm's IBN-a ResNet-50 backbone."""
    cfg = bundled_config('mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py')
    cfg.model.backbone = dict(cfg.model.backbone, type='ResNetIBN',
                              init_cfg=None)
    return cfg


def ibn_segmentor_cfg() -> Config:
    """DeepLabV3 R50-D8 with the IBN-a ResNet-50 (7x7 stem) backbone."""
    cfg = bundled_config(
        'mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py')
    cfg.model.pretrained = None
    cfg.model.backbone = dict(cfg.model.backbone, type='ResNetIBN')
    bn = dict(type='BN', requires_grad=True)  # SyncBN needs a process group
    cfg.model.backbone.norm_cfg = bn
    cfg.model.decode_head.norm_cfg = bn
    cfg.model.auxiliary_head.norm_cfg = bn
    cfg.model.data_preprocessor.size = (64, 64)
    return cfg
