"""KN chains: the ResNet residual rule, data-flow chains in necks and heads,
and KN ResNet-50 inside Mask R-CNN and PSPNet (one CPU training step)."""
import copy
from types import SimpleNamespace

import pytest
import torch
from mmcv.cnn import ConvModule
from torch import nn

from mmnorm.layers.kn import KalmanNorm
from mmnorm.models.kalman_chain import wire_kalman_chains
from mmnorm.ops.kalman import (
    kalman_combine,
    linear_moments,
    rectified_moments,
)

KN = dict(type='KN')


def _record(model):
    """Per KN layer name: the predecessor's statistics it received and the
    combined statistics it produced in the last forward."""
    seen = {}
    for name, layer in model.named_modules():
        if isinstance(layer, KalmanNorm):
            layer.kn_keep_state = True

            def hook(module, args, output, name=name):
                link = module.kn_link
                seen[name] = dict(
                    input=args[0].detach(),
                    prior=link.source_state() if link else None,
                    state=module.kn_state, kind=module.kn_last_prior)
            layer.register_forward_hook(hook)
    return seen


def _resnet(toolkit, **kwargs):
    import importlib
    importlib.import_module(f'mmnorm.{toolkit}')
    from mmengine.registry import DefaultScope
    registry = importlib.import_module(f'{toolkit}.registry').MODELS
    # mmengine builds from the default scope's registry when one is set, so
    # an earlier test's scope would pick the other toolkit's ResNetKN
    with DefaultScope.overwrite_default_scope(toolkit):
        model = registry.build(
            dict(type='ResNetKN', norm_eval=False, **kwargs))
    model.train()  # the toolkits' ResNet.train returns None
    return model


def _add(*states):
    return (sum(s[0] for s in states), sum(s[1] for s in states))


def test_resnet_chain_follows_the_post_activation_residual_rule():
    model = _resnet('mmdet', depth=18, out_indices=(0, 1)).double()
    seen = _record(model)
    model(torch.randn(2, 3, 32, 32, dtype=torch.float64))

    def close(a, b):
        return all(torch.allclose(x, y) for x, y in zip(a, b))

    assert seen['bn1']['prior'] is None and seen['bn1']['kind'] == 'none'
    stem = seen['bn1']['state']
    # first block: conv1 sees ReLU(stem) (max pooling taken as identity)
    assert close(seen['layer1.0.bn1']['prior'], stem)
    assert close(seen['layer1.0.bn2']['prior'], seen['layer1.0.bn1']['state'])
    # identity shortcut: the block output adds the moments of ReLU(input)
    out_10 = _add(seen['layer1.0.bn2']['state'], rectified_moments(*stem))
    assert close(seen['layer1.1.bn1']['prior'], out_10)
    out_11 = _add(seen['layer1.1.bn2']['state'], rectified_moments(*out_10))
    # projection shortcut: its KN predicts from the block input ...
    assert close(seen['layer2.0.downsample.1']['prior'], out_11)
    assert close(seen['layer2.0.bn1']['prior'], out_11)
    # ... and its statistics are what the shortcut adds
    out_20 = _add(seen['layer2.0.bn2']['state'],
                  seen['layer2.0.downsample.1']['state'])
    assert close(seen['layer2.1.bn1']['prior'], out_20)
    # the prediction is the prior pushed through ReLU and the block's conv
    block = model.layer2[1]
    layer = block.bn1
    prediction = linear_moments(block.conv1, *rectified_moments(*out_20))
    x = seen['layer2.1.bn1']['input']
    observed = (x.mean((0, 2, 3))[None],
                x.var((0, 2, 3), unbiased=False)[None])
    assert seen['layer2.1.bn1']['kind'] == 'combined'
    assert close(seen['layer2.1.bn1']['state'],
                 kalman_combine(*observed, *prediction, layer.prior_weight))


def test_deep_stem_and_avg_down_are_chained():
    model = _resnet('mmseg', depth=50, deep_stem=True, avg_down=True,
                    dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1),
                    contract_dilation=True)
    seen = _record(model)
    model(torch.randn(2, 3, 32, 32))
    kinds = {name: entry['kind'] for name, entry in seen.items()}
    assert kinds.pop('stem.1') == 'none'  # the first layer of the chain
    assert kinds['stem.4'] != 'none' and kinds['stem.7'] != 'none'
    assert kinds['layer1.0.downsample.2'] != 'none'
    assert all(kind != 'none' for kind in kinds.values()), kinds


def test_chain_holds_no_state_between_passes_and_copies():
    model = _resnet('mmdet', depth=18)
    model(torch.randn(2, 3, 32, 32))
    layers = [m for m in model.modules() if isinstance(m, KalmanNorm)]
    assert all(m.kn_state is None for m in layers)
    assert all(getattr(b, 'kn_output_state', None) is None
               for b in model.modules())
    clone = copy.deepcopy(model)
    # the copy's links point into the copy
    assert clone.layer1[1].bn1.kn_link.source.block is clone.layer1[0]
    seen = _record(clone)
    clone(torch.randn(2, 3, 32, 32))
    assert seen['layer1.1.bn1']['kind'] == 'combined'


def test_checkpointing_is_refused_by_name():
    with pytest.raises(ValueError, match='ResNetKN: with_cp=True'):
        _resnet('mmdet', depth=18, with_cp=True)


def test_frozen_stages_and_norm_eval_break_the_chain_cleanly():
    model = _resnet('mmdet', depth=18, frozen_stages=1)
    model.train()
    seen = _record(model)
    model(torch.randn(2, 3, 32, 32))
    assert seen['layer1.0.bn1']['state'] is None  # frozen: eval mode BN
    assert seen['layer2.0.bn1']['kind'] == 'none'  # starts a new chain
    assert seen['layer2.0.bn2']['kind'] == 'combined'


class _LevelHead(nn.Module):
    """FPN-like: parallel per-level convs, then a two-conv head shared over
    the levels."""

    def __init__(self):
        super().__init__()
        self.fpn_convs = nn.ModuleList(
            ConvModule(4, 4, 3, padding=1, norm_cfg=KN) for _ in range(3))
        self.head = nn.Sequential(
            ConvModule(4, 6, 3, padding=1, norm_cfg=KN),
            ConvModule(6, 6, 3, padding=1, norm_cfg=KN))

    def forward(self, levels):
        outs = [conv(x) for conv, x in zip(self.fpn_convs, levels)]
        return [self.head(x) for x in outs]


def test_data_flow_chains_per_pyramid_level():
    import mmnorm  # noqa: F401
    model = _LevelHead().double().train()
    assert wire_kalman_chains(model) == 5
    assert wire_kalman_chains(model) == 5  # idempotent
    received = []
    head_conv = model.head[1]
    head_conv.norm.register_forward_hook(
        lambda m, a, o: received.append(m.kn_link.source_state()))
    produced = []
    model.head[0].register_forward_hook(
        lambda m, a, o: produced.append(
            model.kn_chain.producers[id(o)][1]))
    seen = _record(model)
    levels = [torch.randn(2, 4, s, s, dtype=torch.float64) * (i + 1)
              for i, s in enumerate((8, 6, 4))]
    model(levels)
    # every level's second head conv predicts from the first head conv's
    # statistics of the same level
    assert len(received) == 3
    for got, want in zip(received, produced):
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert not torch.allclose(received[0][1], received[2][1])
    # parallel FPN convs are not chained to each other; the head's first
    # conv consumes an FPN output
    assert seen['fpn_convs.1.bn']['kind'] == 'none'
    assert seen['head.0.bn']['kind'] == 'combined'
    assert model.kn_chain.producers == {}
    assert all(m.kn_link is None for m in model.modules()
               if isinstance(m, KalmanNorm))


def test_chain_hook_wires_the_model_and_logs_prior_use():
    from mmengine.logging import MessageHub

    from mmnorm.engine import KalmanChainHook
    model = _LevelHead().train()
    messages = []
    hub = MessageHub.get_instance('kn-hook-test')
    runner = SimpleNamespace(model=model, iter=0, message_hub=hub,
                             logger=SimpleNamespace(info=messages.append))
    hook = KalmanChainHook(interval=1)
    hook.before_train(runner)
    assert '5 KN layers, 5 in ConvModules' in messages[0]
    model([torch.randn(2, 4, 5, 5) for _ in range(3)])
    hook.after_train_iter(runner, 0)
    # 3 of 5 layers got a prediction per forward: head.0 and head.1 at
    # every level (the last level's values are recorded), FPN convs none
    assert hub.get_scalar('train/kn/combined').current() == \
        pytest.approx(2 / 5)
    with pytest.raises(ValueError, match='KalmanChainHook: interval'):
        KalmanChainHook(interval=0)


def test_sync_bn_conversion_leaves_kn_layers_alone():
    from mmengine.model.utils import convert_sync_batchnorm

    import mmnorm  # noqa: F401
    model = nn.Sequential(nn.Conv2d(3, 4, 1), KalmanNorm(4),
                          nn.BatchNorm2d(4))
    converted = convert_sync_batchnorm(model)
    assert type(converted[1]) is KalmanNorm
    assert isinstance(converted[2], nn.SyncBatchNorm)


def _kn_everywhere_detector():
    from toolkit_models import detector_cfg
    cfg = detector_cfg('mask', backbone_norm=KN)
    cfg.model.backbone.type = 'ResNetKN'
    cfg.model.neck.norm_cfg = KN
    cfg.model.roi_head.bbox_head.norm_cfg = KN
    cfg.model.roi_head.mask_head.norm_cfg = KN
    return cfg


def test_kn_resnet50_mask_rcnn_trains_a_step_with_batch_2():
    from toolkit_models import build_in_scope, detection_batch, train_step
    cfg = _kn_everywhere_detector()
    model = build_in_scope('mmdet', cfg.model)
    model.init_weights()
    wire_kalman_chains(model)
    seen = _record(model)
    loss = train_step(model, detection_batch(with_mask=True, batch_size=2))
    assert torch.isfinite(loss)
    assert seen['backbone.layer4.2.bn3']['kind'] in ('combined', 'diverged')
    for name in ('roi_head.bbox_head.shared_convs.1.bn',
                 'roi_head.mask_head.convs.3.bn'):
        assert seen[name]['prior'] is not None, name
    grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_kn_resnet50_pspnet_trains_a_step_with_batch_2():
    from toolkit_models import (
        build_in_scope,
        segmentation_batch,
        segmentor_cfg,
        train_step,
    )
    cfg = segmentor_cfg()
    # ResNetV1c = ResNet with the deep stem
    cfg.model.backbone.update(type='ResNetKN', deep_stem=True)
    for part in ('backbone', 'decode_head', 'auxiliary_head'):
        cfg.model[part].norm_cfg = KN
    model = build_in_scope('mmseg', cfg.model)
    wire_kalman_chains(model)
    seen = _record(model)
    loss = train_step(model, segmentation_batch(batch_size=2))
    assert torch.isfinite(loss)
    assert seen['backbone.stem.7']['prior'] is not None
    assert seen['backbone.layer3.5.bn2']['prior'] is not None
    assert all(torch.isfinite(p.grad).all()
               for p in model.backbone.parameters())
