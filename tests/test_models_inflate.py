"""2D ImageNet checkpoints inflate into mmaction2 3D backbones with SN.

The checkpoints are written here: a torchvision-layout BN ResNet-50 state
dict and the same converted to SN (mmnorm's layout, with mixing weights),
both with random values so that every copy is visible.
"""
import contextlib
import logging
import pickle

import pytest
import torch

pytest.importorskip('mmcv.ops')

import mmnorm.mmaction  # noqa: E402,F401  (installs the inflation hook)
from mmnorm import SwitchableNorm  # noqa: E402
from mmnorm.converters import bn_to_switchable  # noqa: E402
from mmnorm.models import inflate  # noqa: E402

SN = dict(type='SN', momentum=0.003)
R50_STAGES = ((3, 64), (4, 128), (6, 256), (3, 512))


def _norm_state(prefix, channels):
    return {f'{prefix}.weight': torch.randn(channels),
            f'{prefix}.bias': torch.randn(channels),
            f'{prefix}.running_mean': torch.randn(channels),
            f'{prefix}.running_var': torch.rand(channels) + 0.5,
            f'{prefix}.num_batches_tracked': torch.randint(1, 1000, ())}


def torchvision_r50_state():
    """A torchvision-layout ResNet-50 state dict with random values."""
    state = {'conv1.weight': torch.randn(64, 3, 7, 7)}
    state.update(_norm_state('bn1', 64))
    inplanes = 64
    for stage, (blocks, planes) in enumerate(R50_STAGES, 1):
        for index in range(blocks):
            block = f'layer{stage}.{index}'
            shapes = [(planes, inplanes, 1, 1), (planes, planes, 3, 3),
                      (planes * 4, planes, 1, 1)]
            for k, shape in enumerate(shapes, 1):
                state[f'{block}.conv{k}.weight'] = torch.randn(shape)
                state.update(_norm_state(f'{block}.bn{k}', shape[0]))
            if index == 0:
                state[f'{block}.downsample.0.weight'] = torch.randn(
                    planes * 4, inplanes, 1, 1)
                state.update(_norm_state(f'{block}.downsample.1', planes * 4))
            inplanes = planes * 4
    state['fc.weight'] = torch.randn(1000, 2048)
    state['fc.bias'] = torch.randn(1000)
    return state


def sn_r50_state():
    """The same converted to SN, mixing weights random per layer."""
    state = bn_to_switchable(torchvision_r50_state())
    for key in state:
        if key.endswith(('.mean_weight', '.var_weight')):
            state[key] = torch.randn(3)
    return state


def _save(tmp_path, state, name):
    path = tmp_path / name
    torch.save(state, path)
    return str(path)


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp('ckpt2d')
    torch.manual_seed(1)
    states = {'bn': torchvision_r50_state(), 'sn': sn_r50_state()}
    paths = {kind: _save(root, state, f'r50_{kind}.pth')
             for kind, state in states.items()}
    return states, paths


class _Records(logging.Handler):

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def messages(self, level=logging.DEBUG):
        return [r.getMessage() for r in self.records if r.levelno >= level]


@contextlib.contextmanager
def captured_log():
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    handler = _Records()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _build(cfg):
    from toolkit_models import build_in_scope
    return build_in_scope('mmaction', cfg)


def _i3d_recognizer(path):
    from toolkit_models import recognizer_cfg
    cfg = recognizer_cfg()
    cfg.model.backbone.pretrained = path
    cfg.model.backbone.pretrained2d = True
    return _build(cfg.model)


def _names_2d(name):
    """mmaction2's 3D ConvModule name -> torchvision conv and norm names."""
    if 'downsample' in name:
        return name + '.0', name + '.1'
    return name, name.replace('conv', 'bn')


def _check_inflated(backbone, state):
    from mmcv.cnn import ConvModule
    modules = [(n, m) for n, m in backbone.named_modules()
               if isinstance(m, ConvModule)]
    assert len(modules) == 53
    for name, module in modules:
        conv_2d, norm_2d = _names_2d(name)
        weight_3d = module.conv.weight.detach()
        time = weight_3d.shape[2]
        expected = state[f'{conv_2d}.weight'].unsqueeze(2).repeat(
            1, 1, time, 1, 1) / time
        torch.testing.assert_close(weight_3d, expected, rtol=0, atol=0,
                                   msg=name)
        norm = module.bn
        assert isinstance(norm, SwitchableNorm), name
        for entry in inflate.BN_ENTRIES:
            assert torch.equal(getattr(norm, entry).detach(),
                               state[f'{norm_2d}.{entry}']), (name, entry)
        for entry in ('mean_weight', 'var_weight'):
            lam = getattr(norm, entry).detach()
            source = state.get(f'{norm_2d}.{entry}')
            if source is None:
                assert torch.equal(lam, torch.ones(3)), (name, entry)
            else:
                assert torch.equal(lam, source), (name, entry)
    # the stem kernel is (5, 7, 7) in the I3D config: really inflated
    assert backbone.conv1.conv.weight.shape[2] == 5


@pytest.mark.parametrize('source', ['bn', 'sn'])
def test_2d_checkpoint_inflates_into_i3d_with_sn_and_trains(
        source, checkpoints):
    from toolkit_models import recognition_batch, train_step
    states, paths = checkpoints
    model = _i3d_recognizer(paths[source])
    with captured_log() as log:
        model.init_weights()
    _check_inflated(model.backbone, states[source])

    lines = [m for m in log.messages() if m.startswith('inflate ')]
    assert len(lines) == 53
    assert not log.messages(logging.WARNING)
    if source == 'bn':
        assert all(m.endswith(
            'num_batches_tracked; not in the 2D checkpoint, left unchanged: '
            'mean_weight, var_weight; mixing weights as initialized '
            '(uniform over IN/LN/BN)') for m in lines)
    else:
        assert all(m.endswith('mean_weight, var_weight') and
                   'not in the 2D checkpoint' not in m for m in lines)
    # only the ImageNet classifier is left over, and the log says so
    leftovers = [m for m in log.messages() if 'not loaded' in m]
    assert len(leftovers) == 1 and "'fc.weight'" in leftovers[0]
    assert leftovers[0].count("'") == 4

    loss = train_step(model, recognition_batch())
    assert torch.isfinite(loss)
    for name, layer in model.backbone.named_modules():
        if isinstance(layer, SwitchableNorm):
            assert layer.mean_weight.grad is not None, name
            assert torch.isfinite(layer.mean_weight.grad).all(), name
            assert layer.num_batches_tracked.item() == \
                states[source][_names_2d(name[:-3])[1]
                               + '.num_batches_tracked'].item() + 1, name


def test_stock_inflation_raises_key_error_on_sn(checkpoints):
    """Where mmaction2 breaks without the hook (drop the hook once this
    starts passing upstream)."""
    _, paths = checkpoints
    inflate.uninstall()
    try:
        assert not inflate.is_installed()
        model = _i3d_recognizer(paths['bn'])
        with pytest.raises(KeyError, match='bn1.mean_weight'):
            model.init_weights()
    finally:
        inflate.install()
    assert inflate.is_installed()


def test_bn_models_inflate_exactly_as_without_the_hook(checkpoints):
    from toolkit_models import recognizer_cfg
    _, paths = checkpoints

    def inflated():
        torch.manual_seed(0)
        cfg = recognizer_cfg()
        backbone = dict(cfg.model.backbone, pretrained=paths['bn'],
                        pretrained2d=True, norm_cfg=dict(type='BN3d'))
        model = _build(backbone)
        model.init_weights()
        return model.state_dict()

    with_hook = inflated()
    inflate.uninstall()
    try:
        without_hook = inflated()
    finally:
        inflate.install()
    assert with_hook.keys() == without_hook.keys()
    for key, value in with_hook.items():
        assert torch.equal(value, without_hook[key]), key


def test_install_is_idempotent_and_serves_the_resnet3d_family(checkpoints):
    from mmaction.models.backbones import (
        ResNet3d,
        ResNet3dLayer,
        ResNet3dSlowOnly,
    )
    hook = ResNet3d._inflate_bn_params
    assert inflate.install() and inflate.install()
    assert ResNet3d._inflate_bn_params is hook
    assert ResNet3dSlowOnly._inflate_bn_params is hook

    states, paths = checkpoints
    state = states['sn']
    for cfg in (dict(type='ResNet3dLayer', depth=50, stage=3),
                dict(type='ResNet3dSlowOnly', depth=50)):
        model = _build(dict(cfg, pretrained=paths['sn'], pretrained2d=True,
                            norm_cfg=SN))
        if isinstance(model, ResNet3dLayer):
            assert model._inflate_bn_params is hook
        model.init_weights()
        norm = model.layer4[2].conv3.bn
        for entry in ('weight', 'running_var', 'mean_weight', 'var_weight'):
            assert torch.equal(getattr(norm, entry).detach(),
                               state[f'layer4.2.bn3.{entry}']), (cfg, entry)


def test_mismatches_and_missing_entries_are_logged_not_skipped():
    layer = SwitchableNorm(4)
    state = _norm_state('bn', 4)
    del state['bn.bias']
    state['bn.mean_weight'] = torch.randn(2)  # an unconverted official SN1d
    state['bn.var_weight'] = torch.randn(3)
    names = []
    with captured_log() as log:
        inflate.inflate_switchable_params(layer, state, 'bn', names)
    assert sorted(names) == sorted(k for k in state
                                   if k != 'bn.mean_weight')
    assert torch.equal(layer.mean_weight.detach(), torch.ones(3))
    assert torch.equal(layer.var_weight.detach(), state['bn.var_weight'])
    assert torch.equal(layer.bias.detach(), torch.zeros(4))
    warnings = log.messages(logging.WARNING)
    assert len(warnings) == 1
    assert warnings[0] == (
        'inflate bn into SwitchableNorm: copied weight, running_mean, '
        'running_var, num_batches_tracked, var_weight; not in the 2D '
        'checkpoint, left unchanged: bias; wrong shape, left unchanged: '
        'mean_weight (2,) in the checkpoint vs (3,); mixing weights as '
        'initialized (uniform over IN/LN/BN); an official SN checkpoint? '
        'convert it first with '
        'tools/model_converters/official_sn_to_mmnorm.py')


def test_ssn_layers_take_their_buffers_from_an_ssn_checkpoint():
    from mmnorm import SparseSwitchableNorm
    state = bn_to_switchable(_norm_state('bn', 4), sparse=True)
    state['bn.mean_choice'] = torch.tensor(2)
    state['bn.radius'] = torch.tensor(0.5)
    layer = SparseSwitchableNorm(4)
    names = []
    with captured_log() as log:
        inflate.inflate_switchable_params(layer, state, 'bn', names)
    assert sorted(names) == sorted(state)
    assert int(layer.mean_choice) == 2 and float(layer.radius) == 0.5
    assert torch.equal(layer.running_var, state['bn.running_var'])
    assert log.messages() == [
        'inflate bn into SparseSwitchableNorm: copied weight, bias, '
        'running_mean, running_var, num_batches_tracked, mean_weight, '
        'var_weight, radius, mean_choice, var_choice']


class _RunsCode:
    """Unpickling this would create a file: a stand-in for any payload."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, 'w')


def test_checkpoint_loading_is_weights_only(tmp_path):
    from toolkit_models import recognizer_cfg
    marker = tmp_path / 'code_ran'
    state = _norm_state('bn1', 64)
    state['payload'] = _RunsCode(str(marker))
    path = _save(tmp_path, state, 'evil.pth')
    backbone = dict(recognizer_cfg().model.backbone, pretrained=path,
                    pretrained2d=True, norm_cfg=SN)
    model = _build(backbone)
    with pytest.raises(pickle.UnpicklingError):
        model.init_weights()
    assert not marker.exists()


def test_gn3d_inflates_where_mmcv_gn_cannot(checkpoints):
    from toolkit_models import recognition_batch, recognizer_cfg, train_step

    from mmnorm.models.inflate import GroupNorm3d
    states, paths = checkpoints
    cfg = recognizer_cfg()
    backbone = dict(cfg.model.backbone, pretrained=paths['bn'],
                    pretrained2d=True)
    cfg.model.backbone = dict(backbone,
                              norm_cfg=dict(type='GN', num_groups=32))
    with pytest.raises(AttributeError, match="no attribute 'bn'"):
        _build(cfg.model).init_weights()

    cfg.model.backbone = dict(backbone,
                              norm_cfg=dict(type='GN3d', num_groups=32))
    model = _build(cfg.model)
    model.init_weights()
    norm = model.backbone.layer1[0].downsample.bn
    assert isinstance(norm, GroupNorm3d) and norm.num_groups == 32
    for entry in ('weight', 'bias'):
        assert torch.equal(getattr(norm, entry).detach(),
                           states['bn'][f'layer1.0.downsample.1.{entry}'])
    # the same computation as nn.GroupNorm
    x = torch.randn(2, 256, 2, 3, 3)
    plain = torch.nn.GroupNorm(32, 256)
    plain.load_state_dict(norm.state_dict())
    torch.testing.assert_close(norm(x), plain(x))
    assert torch.isfinite(train_step(model, recognition_batch()))
