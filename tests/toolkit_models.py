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


# ---------------------------------------------------------------------------
# Config-driven helpers (tests/test_configs.py): take any toolkit config,
# make it CPU- and offline-friendly through the loaded Config object, and
# feed its model a synthetic batch shaped after the config.

#: checkpoint prefixes that mmengine's CheckpointLoader fetches remotely
REMOTE_PREFIXES = ('http://', 'https://', 'torchvision://', 'modelzoo://',
                   'open-mmlab://', 'openmmlab://', 'mmcls://', 'pavi://',
                   's3://')


def is_remote(checkpoint) -> bool:
    return isinstance(checkpoint, str) and checkpoint.startswith(
        REMOTE_PREFIXES)


def _is_pretrained_init(item) -> bool:
    return isinstance(item, dict) and item.get('type') == 'Pretrained'


def pretrained_refs(node, where: str = 'model'):
    """Yield ``(key path, checkpoint)`` for every pretrained-weights
    reference in a config tree: ``init_cfg`` entries of type ``Pretrained``
    and string-valued ``pretrained=`` keys (mmseg, mmaction2)."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f'{where}.{key}'
            if key == 'pretrained' and isinstance(value, str):
                yield here, value
            elif key == 'init_cfg':
                items = value if isinstance(value, (list, tuple)) else [value]
                for item in items:
                    if _is_pretrained_init(item):
                        yield here, item.get('checkpoint')
            else:
                yield from pretrained_refs(value, here)
    elif isinstance(node, (list, tuple)):
        for index, item in enumerate(node):
            yield from pretrained_refs(item, f'{where}[{index}]')


def module_pretrained_refs(model):
    """:func:`pretrained_refs` over the ``init_cfg`` / ``pretrained``
    attributes that the modules of a built model kept."""
    for name, module in model.named_modules():
        attrs = {key: getattr(module, key, None)
                 for key in ('init_cfg', 'pretrained')}
        yield from pretrained_refs(attrs, name or 'model')


def strip_pretrained(node) -> None:
    """In place: drop every pretrained-weights reference from a config tree
    (``Pretrained`` init entries, ``pretrained=``, mmaction2's
    ``pretrained2d``); other initializers stay."""
    if isinstance(node, dict):
        for key in list(node):
            value = node[key]
            if key == 'pretrained' and isinstance(value, str):
                node[key] = None
            elif key == 'pretrained2d':
                node[key] = False
            elif key == 'init_cfg' and isinstance(value, (list, tuple)):
                kept = [item for item in value
                        if not _is_pretrained_init(item)]
                node[key] = kept or None
            elif key == 'init_cfg' and _is_pretrained_init(value):
                node[key] = None
            else:
                strip_pretrained(value)
    elif isinstance(node, (list, tuple)):
        for item in node:
            strip_pretrained(item)


#: synthetic input sizes: detection (H, W), segmentation crop, video clip
DET_IMAGE = (64, 96)
SEG_CROP = (64, 64)
VIDEO_CLIP = dict(frames=8, size=32)
#: RoIs sampled per image in CPU tests (mmdet default: 512)
ROI_SAMPLES = 32


def shrink_for_cpu(cfg: Config) -> Config:
    """Make ``cfg`` (loaded from any toolkit config) cheap and offline, in
    place: no pretrained weights, fewer sampled RoIs, a small segmentation
    crop. Video clips are shortened by :func:`config_batch` instead."""
    strip_pretrained(cfg.model)
    model = cfg.model
    scope = cfg.get('default_scope')
    if scope == 'mmdet':
        stages = (model.get('train_cfg') or {}).get('rcnn')
        for stage in stages if isinstance(stages, list) else [stages]:
            sampler = (stage or {}).get('sampler')
            if sampler is not None and 'num' in sampler:
                sampler.num = min(sampler.num, ROI_SAMPLES)
    elif scope == 'mmseg':
        preprocessor = model.get('data_preprocessor') or {}
        if preprocessor.get('size') is not None:
            preprocessor.size = SEG_CROP
    return cfg


def _first(head):
    return head[0] if isinstance(head, (list, tuple)) else head


def config_num_classes(cfg: Config) -> int:
    """Classes of the main head (box head, decode head, video head)."""
    model = cfg.model
    head = {'mmdet': lambda: ((model.get('roi_head') or {}).get('bbox_head')
                              or model.get('bbox_head')),
            'mmseg': lambda: model.get('decode_head'),
            'mmaction': lambda: model.get('cls_head')}[cfg.default_scope]()
    return int(_first(head)['num_classes'])


def _has_key(node, wanted: str) -> bool:
    if isinstance(node, dict):
        return any((key == wanted and value is not None)
                   or _has_key(value, wanted) for key, value in node.items())
    if isinstance(node, (list, tuple)):
        return any(_has_key(item, wanted) for item in node)
    return False


def _video_batch(cfg: Config, batch_size: int, num_classes: int):
    from mmaction.structures import ActionDataSample
    preprocessor = cfg.model.get('data_preprocessor') or {}
    frames, size = VIDEO_CLIP['frames'], VIDEO_CLIP['size']
    if preprocessor.get('format_shape', 'NCHW') == 'NCTHW':
        shape = (1, 3, frames, size, size)  # one clip of T frames
    else:  # 2D recognizers: segments as a batch of images
        segments = (cfg.model.get('backbone') or {}).get('num_segments')
        shape = (segments or frames, 3, size, size)
    inputs, samples = [], []
    for index in range(batch_size):
        inputs.append(torch.randint(0, 255, shape, dtype=torch.uint8))
        label = torch.tensor([index % num_classes])
        samples.append(ActionDataSample().set_gt_label(label))
    return dict(inputs=inputs, data_samples=samples)


def _segmentation_batch(batch_size: int, num_classes: int):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    height, width = SEG_CROP
    inputs, samples = [], []
    for _ in range(batch_size):
        inputs.append(torch.randint(0, 255, (3, height, width),
                                    dtype=torch.uint8))
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, num_classes, (1, height, width)))
        sample.set_metainfo(dict(img_shape=SEG_CROP, ori_shape=SEG_CROP,
                                 pad_shape=SEG_CROP))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def config_batch(cfg: Config, batch_size: int = 2) -> dict:
    """A synthetic training batch for the model of a toolkit config: the
    config's class count, masks when the model has a mask head, frames in
    the layout of its data preprocessor."""
    num_classes = config_num_classes(cfg)
    scope = cfg.default_scope
    if scope == 'mmdet':
        from mmdet.testing import demo_mm_inputs
        return demo_mm_inputs(
            batch_size=batch_size, image_shapes=(3, *DET_IMAGE),
            num_items=[2] * batch_size, num_classes=num_classes,
            with_mask=_has_key(cfg.model, 'mask_head'))
    if scope == 'mmseg':
        return _segmentation_batch(batch_size, num_classes)
    if scope == 'mmaction':
        return _video_batch(cfg, batch_size, num_classes)
    raise ValueError(f'no synthetic batch for default_scope={scope!r}')
