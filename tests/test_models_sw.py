"""ResNetSW: the authors' placement, frozen_stages / norm_eval /
zero_init_residual, and SW ResNet-50 inside Mask R-CNN and an mmseg FCN
(one CPU training step each)."""
import importlib

import pytest
import torch
from torch import nn

pytest.importorskip('mmdet.models')
pytest.importorskip('mmseg.models')

from mmnorm.layers.sw import (  # noqa: E402
    SwitchableWhitening,
    SyncSwitchableWhitening,
)


def _build(toolkit, **kwargs):
    from toolkit_models import build_in_scope
    importlib.import_module(f'mmnorm.{toolkit}')
    return build_in_scope(toolkit, dict(type='ResNetSW', init_cfg=None,
                                        **kwargs))


def _sw_names(model):
    return [n for n, m in model.named_modules()
            if isinstance(m, SwitchableWhitening)]


@pytest.mark.parametrize('toolkit', ['mmdet', 'mmseg'])
def test_bottleneck_placement_is_the_authors(toolkit):
    model = _build(toolkit, depth=50)
    assert _sw_names(model) == [
        'bn1', 'layer1.1.bn2', 'layer2.1.bn2', 'layer2.3.bn2',
        'layer3.1.bn2', 'layer3.3.bn2', 'layer3.5.bn2']
    assert model.bn1.num_features == 64 and model.bn1.num_pergroup == 16
    assert model.layer3[5].bn2.num_features == 256
    # everything else stays BN
    assert isinstance(model.layer1[1].bn1, nn.BatchNorm2d)
    assert isinstance(model.layer2[0].downsample[1], nn.BatchNorm2d)


def test_basic_block_placement_options_and_deep_stem():
    model = _build('mmdet', depth=18,
                   sw_cfg=dict(type='SyncSW', num_pergroup=8, sw_type=3),
                   stage_with_sw=(True, False, True, True))
    assert _sw_names(model) == ['bn1', 'layer1.1.bn1', 'layer3.1.bn1',
                                'layer4.1.bn1']
    assert type(model.layer4[1].bn1) is SyncSwitchableWhitening
    assert model.layer4[1].bn1.sw_type == 3
    deep = _build('mmseg', depth=50, deep_stem=True, sw_stem=True)
    assert isinstance(deep.stem[7], SwitchableWhitening)
    assert isinstance(deep.stem[1], nn.BatchNorm2d)
    out = deep(torch.randn(2, 3, 32, 32))
    assert all(torch.isfinite(o).all() for o in out)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match='ResNetSW: stage_with_sw'):
        _build('mmdet', depth=18, stage_with_sw=(True, True))
    with pytest.raises(ValueError, match="ResNetSW: sw_cfg type"):
        _build('mmdet', depth=18, sw_cfg=dict(type='BN'))
    with pytest.raises(ValueError, match='not divisible by num_pergroup'):
        _build('mmdet', depth=18, sw_cfg=dict(num_pergroup=48))


def test_frozen_stages_norm_eval_and_zero_init_residual():
    model = _build('mmdet', depth=50, frozen_stages=1, norm_eval=False,
                   zero_init_residual=True)
    model.init_weights()
    model.train()
    assert not model.bn1.training and not model.layer1[1].bn2.training
    assert not any(p.requires_grad for p in model.bn1.parameters())
    assert not any(p.requires_grad
                   for p in model.layer1[1].bn2.parameters())
    assert model.layer2[1].bn2.training
    assert all(p.requires_grad for p in model.layer2[1].bn2.parameters())
    # zero_init_residual zeroes norm3 (BN); the SW layers keep gamma = 1
    assert model.layer2[1].bn3.weight.abs().max() == 0
    assert torch.equal(model.layer2[1].bn2.weight,
                       torch.ones_like(model.layer2[1].bn2.weight))
    frozen_cov = model.layer1[1].bn2.running_cov.clone()
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(model.layer1[1].bn2.running_cov, frozen_cov)

    evaluated = _build('mmdet', depth=50, norm_eval=True)
    evaluated.train()
    assert not any(m.training for n, m in evaluated.named_modules()
                   if n in _sw_names(evaluated))
    cov = evaluated.layer2[1].bn2.running_cov.clone()
    evaluated(torch.randn(2, 3, 32, 32))
    assert torch.equal(evaluated.layer2[1].bn2.running_cov, cov)


def test_sync_bn_conversion_of_a_built_backbone():
    from mmengine.model import convert_sync_batchnorm
    model = convert_sync_batchnorm(_build('mmdet', depth=18))
    assert type(model.layer1[1].bn1) is SyncSwitchableWhitening
    assert isinstance(model.layer1[1].bn2, nn.SyncBatchNorm)


def test_mixing_weights_get_no_weight_decay_with_the_sn_recipe():
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope

    from mmnorm import sn_paramwise_cfg
    model = _build('mmdet', depth=18)
    with DefaultScope.overwrite_default_scope('mmdet'):
        wrapper = build_optim_wrapper(model, dict(
            optimizer=dict(type='SGD', lr=0.01, weight_decay=1e-4),
            paramwise_cfg=sn_paramwise_cfg()))
    decay = {id(p): g['weight_decay']
             for g in wrapper.optimizer.param_groups for p in g['params']}
    for name, param in model.named_parameters():
        if name.endswith(('.mean_weight', '.var_weight')):
            assert decay[id(param)] == 0.0, name
    assert decay[id(model.layer1[1].conv1.weight)] == 1e-4


def test_sw_resnet50_mask_rcnn_trains_a_step():
    from toolkit_models import (
        build_in_scope,
        detection_batch,
        detector_cfg,
        train_step,
    )
    cfg = detector_cfg('mask', backbone_norm=dict(type='BN'))
    cfg.model.backbone.type = 'ResNetSW'
    model = build_in_scope('mmdet', cfg.model)
    model.init_weights()
    sw = model.backbone.layer3[5].bn2
    before = sw.running_cov.clone()
    loss = train_step(model, detection_batch(with_mask=True, batch_size=2))
    assert torch.isfinite(loss)
    assert not torch.equal(sw.running_cov, before)
    for name, param in model.backbone.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), \
            name
    assert model.backbone.bn1.mean_weight.grad.abs().sum() > 0


def test_sw_resnet50_fcn_trains_a_step():
    from toolkit_models import (
        build_in_scope,
        bundled_config,
        segmentation_batch,
        train_step,
    )
    cfg = bundled_config(
        'mmseg::fcn/fcn_r50-d8_4xb2-40k_cityscapes-512x1024.py')
    model_cfg = cfg.model
    model_cfg.pretrained = None
    bn = dict(type='BN', requires_grad=True)  # SyncBN needs a group
    # ResNetV1c is ResNet with the deep stem
    model_cfg.backbone.update(type='ResNetSW', deep_stem=True, norm_cfg=bn)
    model_cfg.decode_head.norm_cfg = bn
    model_cfg.auxiliary_head.norm_cfg = bn
    model_cfg.data_preprocessor.size = (64, 64)
    model = build_in_scope('mmseg', model_cfg)
    loss = train_step(model, segmentation_batch(batch_size=2))
    assert torch.isfinite(loss)
    # the deep stem's last norm is whitened
    assert isinstance(model.backbone.stem[7], SwitchableWhitening)
    for name, param in model.backbone.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), \
            name


def test_sw_everywhere_in_an_mmaction_3d_resnet():
    pytest.importorskip('mmaction')
    from toolkit_models import build_in_scope
    model = build_in_scope('mmaction', dict(
        type='ResNet3d', depth=18, pretrained=None, pretrained2d=False,
        in_channels=3, base_channels=16, out_indices=(3,),
        norm_cfg=dict(type='SW', num_pergroup=8, sw_type=3),
        norm_eval=False))
    model.train()
    sw = [m for m in model.modules() if isinstance(m, SwitchableWhitening)]
    assert len(sw) > 5
    x = torch.randn(2, 3, 4, 32, 32, requires_grad=True)
    out = model(x)
    out.square().mean().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(m.mean_weight.grad).all() for m in sw)
