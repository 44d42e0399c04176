"""Every BN-keyed toolkit path of docs/bn_paths.md that a config reaches:
the toolkit's own module built with BN and with each registered mmnorm
layer, the same call, the same observable outcome.

The layers are taken from ``mmnorm.NORM_LAYERS`` and the registry
(:func:`mmnorm.compat.register_norm_layer`), so a newly registered layer
joins every test here. Channel counts are small where the toolkit lets us
choose them.
"""
import importlib
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import mmnorm
from mmnorm.compat import is_norm_layer, registry
from mmnorm.compat.toolkit_fixes import norm_units
from mmnorm.converters import BN_ENTRIES

pytest.importorskip('mmcv.ops')

#: extra arguments some layers need with the toolkits' channel counts
_EXTRA = {'SW': dict(num_pergroup=8), 'SyncSW': dict(num_pergroup=8)}


def _layer_names():
    return ['BN'] + [name for name, cls in mmnorm.NORM_LAYERS.items()
                     if is_norm_layer(cls)]


LAYERS = _layer_names()


def _norm_cfg(name, dims=2):
    if name == 'BN':
        return dict(type='BN3d' if dims == 3 else 'BN')
    return dict(type=name, **_EXTRA.get(name, {}))


def _build(toolkit, cfg):
    """Build ``cfg`` in ``toolkit``'s scope with nothing imported but
    mmnorm and the toolkit (the quick start's ``custom_imports``)."""
    from mmengine.registry import DefaultScope
    importlib.import_module(f'{toolkit}.models')
    models = importlib.import_module(f'{toolkit}.registry').MODELS
    with DefaultScope.overwrite_default_scope(toolkit):
        return models.build(cfg)


def _takes_bn_state(layer):
    """BN-shaped, or with a BN loader (see mmnorm.compat.registry)."""
    info = registry.lookup(layer)
    return info is None or info.bn_shaped or \
        registry.bn_loader(layer) is not None


def _per_channel(layer, entry):
    """``entry`` of a norm layer over all its channels (IBN: its IN and BN
    parts put together; IN keeps no statistics)."""
    if isinstance(layer, mmnorm.IBN):
        bn = getattr(layer.BN, entry)
        if entry not in ('weight', 'bias'):
            return bn
        parts = [getattr(layer.IN, entry), bn]
        return torch.cat(parts if layer.in_first else parts[::-1])
    if entry == 'running_var' and hasattr(layer, 'running_cov'):
        return layer.running_cov.diagonal(dim1=-2, dim2=-1).flatten()
    return getattr(layer, entry).flatten()


def _bn_part(layer, entry, value):
    """The channels of a BN checkpoint's ``value`` that ``layer`` keeps
    for ``entry``."""
    if isinstance(layer, mmnorm.IBN) and entry not in ('weight', 'bias'):
        k = layer.in_channels
        return value[k:] if layer.in_first else value[:-k]
    return value


def _modes(model):
    return [(u.training, [p.requires_grad for p in u.parameters()])
            for u in norm_units(model)]


def _all(values):
    return [(t, all(g)) for t, g in values]


# ---------------------------------------------------------------- norm_eval
_NORM_EVAL = {
    'mmdet.ResNet': ('mmdet', dict(type='ResNet', depth=18, base_channels=8,
                                   norm_eval=True), 2),
    'mmdet.ResLayer(shared head)': ('mmdet', dict(
        type='ResLayer', depth=18, stage=3, norm_eval=True), 2),
    'mmdet.EfficientNet': ('mmdet', dict(type='EfficientNet', arch='b0',
                                         norm_eval=True), 2),
    'mmseg.ResNet': ('mmseg', dict(type='ResNet', depth=18,
                                   base_channels=8, stem_channels=8,
                                   norm_eval=True), 2),
    'mmaction.ResNet': ('mmaction', dict(type='ResNet', depth=18,
                                         pretrained=None, norm_eval=True),
                        2),
    'mmaction.ResNet3d': ('mmaction', dict(type='ResNet3d', depth=18,
                                           pretrained=None, base_channels=8,
                                           norm_eval=True), 3),
}


@pytest.mark.parametrize('layer', LAYERS)
@pytest.mark.parametrize('path', list(_NORM_EVAL))
def test_norm_eval_puts_every_norm_layer_in_eval_mode(path, layer):
    toolkit, cfg, dims = _NORM_EVAL[path]
    model = _build(toolkit, dict(cfg, norm_cfg=_norm_cfg(layer, dims)))
    model.train()
    units = norm_units(model)
    assert units and all(is_norm_layer(u) == (layer != 'BN') for u in units)
    assert [u.training for u in units] == [False] * len(units)
    assert all(not m.training for u in units for m in u.modules())


# --------------------------------------------------------------- partial_bn
@pytest.mark.parametrize('layer', LAYERS)
def test_mmaction_partial_bn_freezes_all_but_the_first(layer):
    model = _build('mmaction', dict(type='ResNet', depth=18, pretrained=None,
                                    partial_bn=True,
                                    norm_cfg=_norm_cfg(layer)))
    model.train()
    modes = _modes(model)
    expected = [(True, True)] + [(False, False)] * (len(modes) - 1)
    assert _all(modes) == expected
    # each frozen layer is frozen entirely, the first not at all
    assert all(not any(g) for _, g in modes[1:]) and all(modes[0][1])


# ------------------------------------------------------------ frozen_stages
@pytest.mark.parametrize('layer', LAYERS)
def test_mmdet_frozen_stages_freeze_the_stem_and_stage1(layer):
    model = _build('mmdet', dict(type='ResNet', depth=18, base_channels=8,
                                 frozen_stages=1, norm_eval=False,
                                 norm_cfg=_norm_cfg(layer)))
    model.train()
    for name, unit in model.named_modules():
        if unit not in norm_units(model):
            continue
        frozen = name == model.norm1_name or name.startswith('layer1.')
        assert unit.training is not frozen, name
        assert all(p.requires_grad is not frozen
                   for p in unit.parameters()), name


# ------------------------------------------------------- zero_init_residual
@pytest.mark.parametrize('layer', LAYERS)
def test_mmaction_zero_init_residual_zeroes_the_last_norm(layer):
    model = _build('mmaction', dict(type='ResNet3d', depth=18,
                                    pretrained=None, base_channels=8,
                                    zero_init_residual=True,
                                    norm_cfg=_norm_cfg(layer, dims=3)))
    model.init_weights()
    last = [m.conv2.bn for m in model.modules()
            if type(m).__name__ == 'BasicBlock3d']
    assert len(last) == 8
    for unit in last:
        assert not _per_channel(unit, 'weight').any()
        assert not _per_channel(unit, 'bias').any()
    assert _per_channel(model.conv1.bn, 'weight').all()


# ------------------------------------------------- BN-pretrained checkpoints
def _tv_names(model):
    """{model norm name: torchvision name} for an mmaction2 ResNet."""
    out = {}
    for name, _ in model.named_modules():
        if name.endswith('.bn') or name == 'conv1.bn':
            conv = name[:-len('.bn')]
            out[name] = (conv + '.1' if conv.endswith('downsample')
                         else conv.replace('conv', 'bn'))
    return out


def _tv_checkpoint(cfg):
    """A torchvision-named 2D state dict (``conv1``, ``bn1``,
    ``layerX.Y.bnZ``, ``downsample.0/1``) with random values, shaped for
    the mmaction2 ResNet / ResNet3d built from ``cfg`` with BN."""
    torch.manual_seed(1)
    bn_model = _build('mmaction', dict(cfg, pretrained=None))
    state = {}
    for key, value in bn_model.state_dict().items():
        parts = key.split('.')
        if 'downsample' in parts:
            i = parts.index('downsample')
            parts[i + 1] = {'conv': '0', 'bn': '1'}[parts[i + 1]]
        elif parts[-2] in ('conv', 'bn'):
            kind = parts.pop(-2)
            if kind == 'bn':
                parts[-2] = parts[-2].replace('conv', 'bn')
        value = value.clone()
        if value.dim() == 5:  # a 3D conv: its 2D kernel
            value = value[:, :, 0].contiguous()
        if value.is_floating_point():
            value.uniform_(0.5, 1.5)
        state['.'.join(parts)] = value
    return state


def _check_loaded(model, state, names, fresh):
    """BN's values where the layer has them; everything else (mixing
    weights, SSN's buffers) as in the never-loaded model ``fresh``."""
    for name, tv_name in names.items():
        unit = model.get_submodule(name)
        for entry in ('weight', 'bias', 'running_mean', 'running_var'):
            expected = _bn_part(unit, entry, state[f'{tv_name}.{entry}'])
            assert torch.equal(_per_channel(unit, entry).detach(),
                               expected), (name, entry)
        default = fresh.get_submodule(name).state_dict()
        for key, value in unit.state_dict().items():
            if key.split('.')[-1] not in BN_ENTRIES + ('running_cov',):
                assert torch.equal(value, default[key]), (name, key)


_R2D = dict(type='ResNet', depth=18)
_R3D = dict(type='ResNet3d', depth=18, base_channels=8)


@pytest.fixture(scope='module')
def tv_state():
    return _tv_checkpoint(_R2D)


@pytest.fixture(scope='module')
def state_2d_for_3d():
    return _tv_checkpoint(dict(_R3D, norm_cfg=dict(type='BN3d')))


def _stub_checkpoint(monkeypatch, module_name, state):
    module = importlib.import_module(module_name)
    calls = []

    def fake(filename, *args, **kwargs):
        calls.append(filename)
        return dict(state)

    monkeypatch.setattr(module, '_load_checkpoint', fake)
    return calls


@pytest.mark.parametrize('layer', LAYERS)
def test_mmaction_torchvision_loader(layer, tv_state, monkeypatch):
    calls = _stub_checkpoint(
        monkeypatch, 'mmaction.models.backbones.resnet', tv_state)
    model = _build('mmaction', dict(
        type='ResNet', depth=18, pretrained='torchvision://resnet18',
        torchvision_pretrain=True, norm_cfg=_norm_cfg(layer)))
    if not _takes_bn_state(model.conv1.bn):
        with pytest.raises(ValueError, match='BatchNorm checkpoint'):
            model.init_weights()
        return
    model.init_weights()
    assert calls == ['torchvision://resnet18']
    names = _tv_names(model)
    assert len(names) == 20
    fresh = _build('mmaction', dict(type='ResNet', depth=18, pretrained=None,
                                    norm_cfg=_norm_cfg(layer)))
    _check_loaded(model, tv_state, names, fresh)


@pytest.mark.parametrize('layer', LAYERS)
def test_mmaction_tsm_torchvision_loader(layer, tv_state, monkeypatch):
    _stub_checkpoint(monkeypatch, 'mmaction.models.backbones.resnet_tsm',
                     tv_state)
    cfg = dict(type='ResNetTSM', depth=18, norm_cfg=_norm_cfg(layer))
    model = _build('mmaction', dict(cfg, pretrained='torchvision://resnet18',
                                    pretrained2d=True))
    model.init_weights()
    names = {}
    for name, tv_name in _tv_names(model).items():
        names[name] = tv_name.replace('.net', '')
    assert len(names) == 20
    fresh = _build('mmaction', dict(cfg, pretrained=None, pretrained2d=False))
    _check_loaded(model, tv_state, names, fresh)


@pytest.mark.parametrize('layer', LAYERS)
def test_mmaction_2d_to_3d_inflation(layer, state_2d_for_3d, monkeypatch):
    tv_state = state_2d_for_3d
    _stub_checkpoint(monkeypatch, 'mmaction.models.backbones.resnet3d',
                     tv_state)
    model = _build('mmaction', dict(
        _R3D, pretrained='resnet18_2d.pth', pretrained2d=True,
        norm_cfg=_norm_cfg(layer, dims=3)))
    if not _takes_bn_state(model.conv1.bn):
        with pytest.raises(ValueError, match='BatchNorm checkpoint'):
            model.init_weights()
        return
    model.init_weights()
    fresh = _build('mmaction', dict(_R3D, pretrained=None,
                                    norm_cfg=_norm_cfg(layer, dims=3)))
    _check_loaded(model, tv_state, _tv_names(model), fresh)


@pytest.mark.parametrize('layer', LAYERS)
def test_init_cfg_pretrained_with_a_bn_checkpoint(layer, tmp_path):
    cfg = dict(type='ResNet', depth=18, base_channels=8)
    torch.manual_seed(1)
    bn_model = _build('mmdet', cfg)
    with torch.no_grad():
        for value in bn_model.state_dict().values():
            if value.is_floating_point():
                value.uniform_(0.5, 1.5)
    path = str(tmp_path / 'bn.pth')
    torch.save(bn_model.state_dict(), path)
    model = _build('mmdet', dict(cfg, norm_cfg=_norm_cfg(layer),
                                 init_cfg=dict(type='Pretrained',
                                               checkpoint=path)))
    model.init_weights()
    units = [n for n, m in model.named_modules() if m in norm_units(model)]
    if not _takes_bn_state(model.get_submodule(units[0])):
        return  # not BN-shaped: mmengine reports the unmatched keys
    fresh = _build('mmdet', dict(cfg, norm_cfg=_norm_cfg(layer)))
    _check_loaded(model, bn_model.state_dict(), {n: n for n in units}, fresh)


# ------------------------------------------------------ sync_bn conversion
@pytest.mark.parametrize('layer', LAYERS)
def test_sync_bn_gives_every_layer_its_sync_version(layer):
    from mmengine.model import convert_sync_batchnorm
    model = _build('mmdet', dict(type='ResNet', depth=18, base_channels=8,
                                 norm_cfg=_norm_cfg(layer)))
    before = [(type(u), {k: v.clone() for k, v in u.state_dict().items()})
              for u in norm_units(model)]
    model = convert_sync_batchnorm(model)
    after = norm_units(model)
    assert len(after) == len(before)
    for (cls, state), unit in zip(before, after):
        if cls is nn.BatchNorm2d:
            expected = nn.SyncBatchNorm
        else:
            expected = registry.sync_version(cls) or cls
        assert type(unit) is expected
        if isinstance(unit, mmnorm.IBN):
            assert type(unit.BN) is nn.SyncBatchNorm
        for key, value in state.items():
            assert torch.equal(unit.state_dict()[key], value)


# ---------------------------------------------- parameter-wise weight decay
@pytest.mark.parametrize('layer', LAYERS)
def test_norm_decay_mult_reaches_every_norm_parameter(layer):
    from mmengine.optim import build_optim_wrapper
    model = _build('mmdet', dict(type='ResNet', depth=18, base_channels=8,
                                 norm_cfg=_norm_cfg(layer)))
    wrapper = build_optim_wrapper(model, dict(
        optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-4),
        paramwise_cfg=dict(norm_decay_mult=0.0)))
    decay = {id(p): g['weight_decay']
             for g in wrapper.optimizer.param_groups for p in g['params']}
    norm_params = {id(p) for u in norm_units(model) for p in u.parameters()}
    assert norm_params
    assert {decay[i] for i in norm_params} == {0.0}
    assert {decay[id(p)] for p in model.conv1.parameters()} == {1e-4}


@pytest.mark.parametrize('layer', LAYERS)
def test_mmaction_tsm_constructor_puts_norms_in_its_norm_group(layer):
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope
    importlib.import_module('mmaction.engine')
    backbone = _build('mmaction', dict(type='ResNet', depth=18,
                                       pretrained=None,
                                       norm_cfg=_norm_cfg(layer)))
    model = nn.Sequential(backbone, nn.Flatten(), nn.Linear(512, 4))
    with DefaultScope.overwrite_default_scope('mmaction'):
        wrapper = build_optim_wrapper(model, dict(
            constructor='TSMOptimWrapperConstructor',
            optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-4),
            paramwise_cfg=dict(fc_lr5=True)))
    decay = {id(p): (g['lr'], g['weight_decay'])
             for g in wrapper.optimizer.param_groups for p in g['params']}
    norm_params = [p for u in norm_units(backbone) for p in u.parameters()]
    assert {decay[id(p)] for p in norm_params} == {(0.1, 0)}


# ------------------------------------------------------------ FLOP counter
@pytest.mark.parametrize('layer', LAYERS)
def test_flop_counter_counts_norms_like_bn(layer):
    from mmcv.cnn import ConvModule, get_model_complexity_info

    def flops(norm_cfg):
        model = nn.Sequential(ConvModule(3, 16, 3, norm_cfg=norm_cfg,
                                         act_cfg=None))
        count, _ = get_model_complexity_info(
            model, (3, 8, 8), print_per_layer_stat=False,
            as_strings=False)
        return count

    assert flops(_norm_cfg(layer)) == flops(dict(type='BN'))


# --------------------------------------------------------- conv-BN folding
@pytest.mark.parametrize('layer', LAYERS)
def test_fuse_conv_bn_folds_exactly_or_refuses(layer):
    from mmcv.cnn import ConvModule, fuse_conv_bn
    model = nn.Sequential(ConvModule(3, 16, 3, norm_cfg=_norm_cfg(layer),
                                     act_cfg=None)).eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    unit = norm_units(model)[0]
    if getattr(unit, 'folds_into_conv', True) is False:
        with pytest.raises(ValueError, match='mmnorm layers'):
            fuse_conv_bn(model)
        assert norm_units(model) == [unit]  # nothing changed
        return
    torch.testing.assert_close(fuse_conv_bn(model)(x), expected,
                               rtol=1e-4, atol=1e-5)


# ------------------------------------------- SyncNormHook's states (mmdet)
@pytest.mark.parametrize('layer', LAYERS)
def test_sync_norm_hook_collects_every_norm_state(layer):
    from mmdet.engine.hooks.sync_norm_hook import get_norm_states
    model = _build('mmdet', dict(type='ResNet', depth=18, base_channels=8,
                                 norm_cfg=_norm_cfg(layer)))
    states = get_norm_states(model)
    for name, unit in model.named_modules():
        if unit in norm_units(model):
            for key in unit.state_dict():
                assert f'{name}.{key}' in states


# -------------------------------------------------- the mechanism itself
def test_import_mmnorm_imports_no_toolkit_and_patches_them_when_loaded():
    """The README's quick start: ``custom_imports=dict(imports=['mmnorm'])``
    and toolkit modules imported afterwards (by the Runner)."""
    code = (
        'import sys, mmnorm\n'
        "found = [m for m in ('mmdet', 'mmseg', 'mmaction') "
        'if m in sys.modules]\n'
        'assert not found, found\n'
        'from mmnorm.compat import patches\n'
        "if 'mmcv.cnn.utils.flops_counter' not in sys.modules:\n"
        "    assert not patches.is_applied('flops-counter')\n"
        'import mmcv.cnn\n'
        "assert patches.is_applied('flops-counter'), patches.applied()\n"
        "assert len(patches.applied()['fuse-conv-bn']) == 2\n")
    env = dict(os.environ, OMP_NUM_THREADS='1')
    result = subprocess.run([sys.executable, '-c', code], env=env,
                            capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(
                                os.path.abspath(__file__))))
    assert result.returncode == 0, result.stderr[-3000:]
    # here the toolkits were imported after mmnorm, by the tests above
    from mmnorm.compat import patches
    _build('mmdet', dict(type='ResNet', depth=18, base_channels=8))
    _build('mmaction', dict(type='ResNet', depth=18, pretrained=None))
    done = patches.applied()
    assert 'mmdet.models.backbones.efficientnet:EfficientNet.train' in \
        done['norm-eval']
    assert done['partial-bn'] and done['torchvision-bn-loader']


def _issue_case(case, tv_state, monkeypatch):
    """The four failures of issue 13, as a user meets them with SN."""
    sn = dict(type='SN')

    def training(model):
        def modes():
            model.train()  # the toolkits' train() returns None
            return [u.training for u in norm_units(model)]
        return modes

    if case == 'shared-head':
        return training(_build('mmdet', dict(
            type='ResLayer', depth=18, stage=3, norm_eval=True,
            norm_cfg=sn)))
    if case == 'efficientnet':
        return training(_build('mmdet', dict(
            type='EfficientNet', arch='b0', norm_eval=True, norm_cfg=sn)))
    if case == 'partial-bn':
        model = _build('mmaction', dict(_R2D, pretrained=None,
                                        partial_bn=True, norm_cfg=sn))

        def frozen():
            model.train()
            return [u.training for u in norm_units(model)[1:]]
        return frozen
    _stub_checkpoint(monkeypatch, 'mmaction.models.backbones.resnet',
                     tv_state)
    model = _build('mmaction', dict(
        _R2D, pretrained='torchvision://resnet18', torchvision_pretrain=True,
        norm_cfg=sn))
    return lambda: model.init_weights()


@pytest.mark.parametrize('case,patch', [
    ('shared-head', 'norm-eval'), ('efficientnet', 'norm-eval'),
    ('partial-bn', 'partial-bn'), ('torchvision', 'torchvision-bn-loader')])
def test_upstream_still_fails_without_the_patch(case, patch, tv_state,
                                                monkeypatch):
    """Where the pinned toolkits break SN (drop the patch once its case
    passes without it): with the patch SN behaves as BN, without it the
    layers stay in training mode or loading raises the KeyError."""
    from mmnorm.compat import patches
    call = _issue_case(case, tv_state, monkeypatch)
    patches.uninstall((patch,))
    try:
        if case == 'torchvision':
            with pytest.raises(KeyError, match='bn1.mean_weight'):
                call()
        else:
            assert all(call())  # every SN layer still in training mode
    finally:
        patches.install()
    result = call()
    if case != 'torchvision':
        assert result and not any(result)


def test_uninstall_restores_upstream_and_install_is_idempotent():
    from mmaction.models.backbones.resnet import ResNet

    from mmnorm.compat import patches
    patched = ResNet.__dict__['_partial_bn']
    try:
        patches.uninstall()
        assert not patches.applied()
        assert ResNet._partial_bn is not patched
        assert ResNet._partial_bn.__name__ == '_partial_bn'
    finally:
        patches.install()
        patches.install()
    assert ResNet.__dict__['_partial_bn'] is not patched  # a new wrapper
    assert ResNet._partial_bn.__mmnorm_patch__[0] == \
        'partial-bn'
    assert not hasattr(ResNet._partial_bn.__mmnorm_patch__[1],
                       '__mmnorm_patch__')  # wrapped once


def test_every_patch_says_what_it_fixes_and_when_it_can_go():
    from mmnorm.compat.patches import PATCHES
    names = [p.name for p in PATCHES]
    assert len(names) == len(set(names))
    docs = os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), 'docs', 'bn_paths.md')
    with open(docs) as f:
        table = f.read()
    for patch in PATCHES:
        assert patch.fixes and patch.remove_when and patch.targets
        assert all(':' in t for t in patch.targets)
        assert f'`{patch.name}`' in table, patch.name
