"""The converter of the authors' SW ImageNet checkpoints, against state
dicts built here in the authors' key layout."""
import importlib
import importlib.util
import os
import re

import pytest
import torch

from mmnorm.converters_sw import convert_official_sw


def _sw_entries(prefix, channels, group, sources, tie, gen):
    g = channels // group
    a = torch.randn(g, group, 2 * group, generator=gen)
    entries = {
        'weight': torch.randn(channels, generator=gen),
        'bias': torch.randn(channels, generator=gen),
        'sw_mean_weight': torch.randn(sources, generator=gen),
        'running_mean': torch.randn(g, group, 1, generator=gen),
        'running_cov': a @ a.transpose(1, 2) / (2 * group),
    }
    if not tie:
        entries['sw_var_weight'] = torch.randn(sources, generator=gen)
    return {f'module.{prefix}.{k}': v for k, v in entries.items()}


def _bn_entries(prefix, channels, gen):
    return {f'module.{prefix}.{k}': v for k, v in dict(
        weight=torch.randn(channels, generator=gen),
        bias=torch.randn(channels, generator=gen),
        running_mean=torch.randn(channels, generator=gen),
        running_var=torch.rand(channels, generator=gen) + 0.5,
        num_batches_tracked=torch.tensor(5)).items()}


def _authors_state(sources=2, tie=False):
    """A small checkpoint laid out like the authors' ResNet: stem ``sw1``,
    ``layer1.1.sw2`` (a Bottleneck's whitening layer), BN elsewhere,
    DataParallel prefix, the classifier."""
    gen = torch.Generator().manual_seed(0)
    state = {'module.conv1.weight': torch.randn(16, 3, 7, 7, generator=gen)}
    state.update(_sw_entries('sw1', 16, 8, sources, tie, gen))
    state.update(_bn_entries('layer1.0.bn1', 8, gen))
    state.update(_bn_entries('layer1.1.bn1', 8, gen))
    state.update(_sw_entries('layer1.1.sw2', 8, 4, sources, tie, gen))
    state['module.fc.weight'] = torch.randn(10, 8, generator=gen)
    state['module.fc.bias'] = torch.randn(10, generator=gen)
    return state


def test_keys_values_and_report():
    state = _authors_state()
    out, report = convert_official_sw(state)
    assert 'fc.weight' not in out and not any(
        k.startswith('module.') or '.sw' in k or k.startswith('sw')
        for k in out)
    torch.testing.assert_close(out['bn1.mean_weight'],
                               state['module.sw1.sw_mean_weight'])
    torch.testing.assert_close(out['layer1.1.bn2.var_weight'],
                               state['module.layer1.1.sw2.sw_var_weight'])
    torch.testing.assert_close(out['layer1.1.bn2.running_cov'],
                               state['module.layer1.1.sw2.running_cov'])
    torch.testing.assert_close(out['layer1.0.bn1.running_var'],
                               state['module.layer1.0.bn1.running_var'])
    assert int(out['bn1.num_batches_tracked']) == 0
    assert report[0] == '2 SW layers: bn1, layer1.1.bn2'
    # the two layers have different group sizes: said, and the sw_cfg line
    assert any('layers differ' in line for line in report)
    assert "sw_cfg=dict(type='SW', num_pergroup=8, sw_type=2, " \
        'tie_weight=False)' in report[-1]
    kept, _ = convert_official_sw(state, keep_head=True)
    assert 'fc.weight' in kept


def test_zero_running_cov_becomes_identity_and_is_reported():
    state = _authors_state(tie=True)
    state['module.sw1.running_cov'].zero_()
    out, report = convert_official_sw(state)
    torch.testing.assert_close(out['bn1.running_cov'],
                               torch.eye(8).expand(2, 8, 8))
    assert 'bn1.var_weight' not in out
    assert any(line.startswith('bn1: running_cov was all zero')
               for line in report)
    assert 'tie_weight=True' in report[-1]


def test_sw_type_5_reports_the_covariance_weight_change():
    state = _authors_state(sources=5)
    _, report = convert_official_sw(state)
    lam = state['module.layer1.1.sw2.sw_var_weight'].double()
    w = lam.softmax(0)
    theirs = torch.stack([w[0], w[1], w[0], w[1], w[4]])
    expected = float((theirs - w).abs().max())
    line = next(s for s in report if s.startswith('layer1.1.bn2: sw_type=5'))
    assert float(re.search(r'up to ([\d.]+)', line)[1]) == pytest.approx(
        expected, abs=1e-4)


def test_bad_checkpoints_are_refused():
    with pytest.raises(ValueError, match='no SW layer'):
        convert_official_sw({'module.conv1.weight': torch.zeros(1)})
    state = _authors_state()
    state['module.sw1.sw_mean_weight'] = torch.zeros(4)
    with pytest.raises(ValueError, match='has 4 entries'):
        convert_official_sw(state)


def _tool():
    path = os.path.join(os.path.dirname(__file__), '..', 'tools',
                        'model_converters', 'official_sw_to_mmnorm.py')
    spec = importlib.util.spec_from_file_location('_official_sw_tool', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _resnet_sw(depth, **kwargs):
    importlib.import_module('mmnorm.mmdet')
    from mmengine.registry import DefaultScope
    registry = importlib.import_module('mmdet.registry').MODELS
    with DefaultScope.overwrite_default_scope('mmdet'):
        return registry.build(dict(type='ResNetSW', depth=depth,
                                   init_cfg=None, **kwargs))


def _to_authors_layout(model):
    """The state dict of ``model`` renamed the way the authors' builder
    names it (``sw1``, ``layerX.Y.sw2`` / ``sw1``, ``sw_*_weight``), with
    random values and no ``num_batches_tracked`` in SW layers."""
    from mmnorm.layers.sw import SwitchableWhitening
    sw_names = {name for name, m in model.named_modules()
                if isinstance(m, SwitchableWhitening)}
    gen = torch.Generator().manual_seed(1)
    state = {}
    for key, value in model.state_dict().items():
        prefix, _, leaf = key.rpartition('.')
        if prefix in sw_names:
            if leaf == 'num_batches_tracked':
                continue
            head, _, norm = prefix.rpartition('.')
            prefix = (head + '.' if head else '') + norm.replace('bn', 'sw')
            leaf = {'mean_weight': 'sw_mean_weight',
                    'var_weight': 'sw_var_weight'}.get(leaf, leaf)
        if value.is_floating_point():
            value = torch.rand(value.shape, generator=gen) + 0.5
        state[f'module.{prefix}.{leaf}'] = value
    state['module.fc.weight'] = torch.zeros(1000, 2048)
    return state


@pytest.mark.parametrize('depth, sw_cfg', [
    (50, dict(type='SW')),
    (18, dict(type='SW', num_pergroup=8, sw_type=5, tie_weight=True))])
def test_authors_checkpoint_loads_strictly_into_resnet_sw(depth, sw_cfg,
                                                          tmp_path):
    pytest.importorskip('mmdet.models')
    model = _resnet_sw(depth, sw_cfg=sw_cfg)
    state = _to_authors_layout(model)
    names = [k for k in state if '.sw' in k or k.startswith('module.sw')]
    block_layer = 'sw2' if depth == 50 else 'sw1'
    assert f'module.layer1.1.{block_layer}.running_cov' in names
    src, dst = tmp_path / 'authors.pth', tmp_path / 'mmnorm.pth'
    torch.save(dict(state_dict=state), src)
    tool = _tool()
    tool.main([str(src), str(dst)])
    converted = torch.load(dst, weights_only=True)
    fresh = _resnet_sw(depth, sw_cfg=sw_cfg)
    fresh.load_state_dict(converted, strict=True)
    sw_key = 'layer3.5.bn2' if depth == 50 else 'layer3.1.bn1'
    torch.testing.assert_close(
        fresh.state_dict()[f'{sw_key}.running_cov'],
        state[f'module.{sw_key.replace("bn", "sw")}.running_cov'])
    torch.testing.assert_close(fresh.state_dict()['bn1.mean_weight'],
                               state['module.sw1.sw_mean_weight'])
