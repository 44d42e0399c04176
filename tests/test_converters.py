"""Converters, on state dicts built with the official names and shapes."""
import os
import subprocess
import sys

import pytest
import torch

import mmnorm
from mmnorm.converters import ABSENT, bn_to_switchable, convert_official_sn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _resnet(norm, depth=50):
    from mmdet.models.backbones import ResNet
    return ResNet(depth, norm_cfg=dict(type=norm))


def _randomize(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.1)
    layers = [m for m in model.modules()
              if isinstance(m, mmnorm.SparseSwitchableNorm)]
    for i, module in enumerate(layers):
        module.radius.fill_(0.5)
        if i % 2:  # every other SSN layer has a fixed mean choice
            module.mean_choice.fill_(1)


def _official_layout(model):
    """The authors' checkpoint layout, written from ALGORITHMS.md."""
    official = {}
    for key, value in model.state_dict().items():
        prefix, _, name = key.rpartition('.')
        if name == 'num_batches_tracked':
            continue
        if name in ('weight', 'bias') and 'conv' not in prefix and \
                'downsample.0' not in prefix:
            value = value.view(1, -1, 1, 1)
        elif name in ('running_mean', 'running_var'):
            value = value.view(1, -1, 1)
        elif name in ('mean_choice', 'var_choice'):
            kind = name.split('_')[0]
            official[f'module.{prefix}.{kind}_fixed'] = torch.tensor(
                [float(value >= 0)])
            if value >= 0:
                one_hot = torch.zeros(3)
                one_hot[int(value)] = 1
                official[f'module.{prefix}.{kind}_weight'] = one_hot
            continue
        elif name == 'radius':
            value = value.view(1)
        key = f'module.{key}'
        if key not in official:
            official[key] = value.clone()
    official['module.fc.weight'] = torch.randn(1000, 2048)
    official['module.fc.bias'] = torch.randn(1000)
    return official


@pytest.mark.parametrize('norm,depth', [('SN', 50), ('SSN', 50),
                                        ('SN', 101)])
def test_official_checkpoint_into_mmdet_resnet(norm, depth):
    source = _resnet(norm, depth)
    _randomize(source)
    converted = convert_official_sn(_official_layout(source))
    target = _resnet(norm, depth)
    target.load_state_dict(converted, strict=True)
    source.eval()
    target.eval()
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(source(x), target(x)):
        torch.testing.assert_close(a, b)


def test_two_entry_lambdas_map_to_the_right_branches():
    official = {
        'module.fc_norm.mean_weight': torch.tensor([0.3, 0.7]),  # SN1d
        'module.fc_norm.var_weight': torch.tensor([0.1, 0.2]),
        'module.fc_norm.running_mean': torch.zeros(1, 4, 1),
        'module.fc_norm.running_var': torch.ones(1, 4, 1),
        'module.fc_norm.weight': torch.ones(1, 4),
        'module.fc_norm.bias': torch.zeros(1, 4),
        'module.nobn.mean_weight': torch.tensor([0.4, 0.6]),  # [IN, LN]
        'module.nobn.var_weight': torch.tensor([0.5, 0.5]),
        'module.nobn.weight': torch.ones(1, 4, 1, 1),
        'module.nobn.bias': torch.zeros(1, 4, 1, 1),
    }
    out = convert_official_sn(official)
    assert out['fc_norm.mean_weight'].tolist() == pytest.approx(
        [ABSENT, 0.3, 0.7])
    assert out['nobn.mean_weight'].tolist() == pytest.approx(
        [0.4, 0.6, ABSENT])
    flat = mmnorm.SwitchableNorm(4)
    flat.load_state_dict({k[len('fc_norm.'):]: v for k, v in out.items()
                          if k.startswith('fc_norm.')})
    flat(torch.randn(3, 4))
    assert flat.ratios()['mean']['ln'] == pytest.approx(
        torch.tensor([0.3, 0.7]).softmax(0)[0].item())
    nobn = mmnorm.SwitchableNorm(4, using_bn=False)
    nobn.load_state_dict({k[len('nobn.'):]: v for k, v in out.items()
                          if k.startswith('nobn.')})
    assert nobn.ratios()['mean']['in'] == pytest.approx(
        torch.tensor([0.4, 0.6]).softmax(0)[0].item())


@pytest.mark.parametrize('sparse', [False, True])
def test_bn_checkpoint_into_sn_model(sparse):
    bn = _resnet('BN', depth=18)
    bn.eval()
    state = {f'backbone.{k}': v for k, v in bn.state_dict().items()}
    out = bn_to_switchable(state, bn_ratio=0.8, sparse=sparse,
                           strip_prefix='backbone.')
    target = _resnet('SSN' if sparse else 'SN', depth=18)
    target.load_state_dict(out, strict=True)
    norm = target.layer1[0].bn1
    if not sparse:
        assert norm.ratios()['mean']['bn'] == pytest.approx(0.8)


def test_converter_tools_round_trip(tmp_path):
    source = _resnet('SN', depth=18)
    _randomize(source)
    official = {k: v for k, v in _official_layout(source).items()
                if not k.startswith('module.fc.')}
    src, dst = tmp_path / 'official.pth', tmp_path / 'mmnorm.pth'
    torch.save({'state_dict': official}, src)
    subprocess.run([sys.executable, os.path.join(
        ROOT, 'tools', 'model_converters', 'official_sn_to_mmnorm.py'),
        str(src), str(dst)], check=True, capture_output=True)
    target = _resnet('SN', depth=18)
    target.load_state_dict(torch.load(dst, weights_only=True), strict=True)
    bn_src, bn_dst = tmp_path / 'bn.pth', tmp_path / 'sn.pth'
    torch.save(_resnet('BN', depth=18).state_dict(), bn_src)
    subprocess.run([sys.executable, os.path.join(
        ROOT, 'tools', 'model_converters', 'bn_to_sn.py'), str(bn_src),
        str(bn_dst), '--bn-ratio', '0.8'], check=True, capture_output=True)
    _resnet('SN', depth=18).load_state_dict(
        torch.load(bn_dst, weights_only=True), strict=True)


def _official_ibn_resnet50(kind):
    """An IBN-Net-50 state dict written from the architecture, with the
    authors' names (ALGORITHMS.md section 4) and torchvision layout."""
    state = {}

    def bn(prefix, c):
        state.update({f'{prefix}.weight': torch.rand(c) + 0.5,
                      f'{prefix}.bias': torch.randn(c),
                      f'{prefix}.running_mean': torch.randn(c),
                      f'{prefix}.running_var': torch.rand(c) + 0.5,
                      f'{prefix}.num_batches_tracked': torch.tensor(7)})

    def instance_norm(prefix, c):
        state.update({f'{prefix}.weight': torch.rand(c) + 0.5,
                      f'{prefix}.bias': torch.randn(c)})

    state['conv1.weight'] = torch.randn(64, 3, 7, 7)
    (instance_norm if kind == 'b' else bn)('bn1', 64)
    inplanes = 64
    for stage, (blocks, planes) in enumerate(
            zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for i in range(blocks):
            p = f'layer{stage}.{i}'
            state[f'{p}.conv1.weight'] = torch.randn(planes, inplanes, 1, 1)
            if kind == 'a' and stage <= 3:
                instance_norm(f'{p}.bn1.IN', planes // 2)
                bn(f'{p}.bn1.BN', planes - planes // 2)
            else:
                bn(f'{p}.bn1', planes)
            state[f'{p}.conv2.weight'] = torch.randn(planes, planes, 3, 3)
            bn(f'{p}.bn2', planes)
            state[f'{p}.conv3.weight'] = torch.randn(planes * 4, planes, 1,
                                                     1)
            bn(f'{p}.bn3', planes * 4)
            if i == 0:
                state[f'{p}.downsample.0.weight'] = torch.randn(
                    planes * 4, inplanes, 1, 1)
                bn(f'{p}.downsample.1', planes * 4)
            if kind == 'b' and stage <= 2 and i == blocks - 1:
                instance_norm(f'{p}.IN', planes * 4)
            inplanes = planes * 4
    state['fc.weight'] = torch.randn(1000, 2048)
    state['fc.bias'] = torch.randn(1000)
    return {f'module.{k}': v for k, v in state.items()}


@pytest.mark.parametrize('toolkit', ['mmdet', 'mmseg'])
@pytest.mark.parametrize('kind,backbone', [('a', 'ResNetIBN'),
                                           ('b', 'ResNetIBNb')])
def test_official_ibn_checkpoints_load_strictly(toolkit, kind, backbone):
    from toolkit_models import build_in_scope

    from mmnorm.converters import convert_official_ibn
    model = build_in_scope(toolkit, dict(type=backbone, depth=50))
    converted = convert_official_ibn(_official_ibn_resnet50(kind))
    model.load_state_dict(converted, strict=True)
    assert 'fc.weight' not in converted


def test_converted_checkpoint_works_as_init_cfg(tmp_path):
    from mmdet.models.backbones import ResNet
    source = _resnet('SN', depth=18)
    _randomize(source)
    official = {k: v for k, v in _official_layout(source).items()
                if not k.startswith('module.fc.')}
    path = tmp_path / 'sn_r18_mmnorm.pth'
    torch.save(convert_official_sn(official), path)
    model = ResNet(18, norm_cfg=dict(type='SN'),
                   init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    for name, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value)
