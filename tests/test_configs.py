"""Every config under ``configs/`` builds and trains one iteration on CPU.

Configs are discovered when pytest collects this file, so configs added
later are covered without touching it. ``_base_`` fragments (any folder
named ``_base_``) are skipped. Per config:

* it loads, names its toolkit (``default_scope``) and imports mmnorm
  through ``custom_imports`` without allowing failed imports;
* it is offline-safe: the only remote checkpoints it mentions are the
  documented ImageNet initializations (:data:`DOCUMENTED_IMAGENET_INITS`),
  ``load_from`` is never remote, and building the model downloads nothing;
* with pretrained weights switched off and sizes shrunk through the loaded
  ``Config`` (never by editing files), the model initializes without any
  download, trains one iteration on a synthetic batch of 2 samples with the
  toolkit's data preprocessor, the loss is finite, every trainable
  normalization parameter (SN's ``mean_weight``/``var_weight`` included)
  gets a finite gradient, and the config's optimizer wrapper takes a step.
  Synchronized layers run single-process, where they are exactly SN/SSN;
  ``SyncBN`` is reverted to BN as mmengine does in non-distributed runs.

By default only one config per folder and toolkit runs (the first file
name in sorted order); the others are marked ``slow``
(``make test-slow``, or ``pytest -m "slow or not slow"``).

The COCO configs also have to follow the naming scheme of
``configs/coco/README.md``, which states their settings.
"""
from __future__ import annotations

import ast
import functools
import logging
import re
import socket
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from toolkit_models import (
    build_in_scope,
    config_batch,
    is_remote,
    module_pretrained_refs,
    pretrained_refs,
    shrink_for_cpu,
    train_step,
)
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

pytest.importorskip('mmcv.ops')

REPO = Path(__file__).resolve().parents[1]
CONFIG_ROOT = REPO / 'configs'
TOOLKITS = ('mmdet', 'mmseg', 'mmaction')

#: Remote checkpoints a config may keep: the toolkits' standard ImageNet
#: initializations (BN ResNets from torchvision or OpenMMLab, Detectron's
#: GN ResNets), which the toolkits' own configs download the same way.
#: Any other pretrained weights must default to a local file or None.
DOCUMENTED_IMAGENET_INITS = frozenset({
    'torchvision://resnet50',
    'torchvision://resnet101',
    'https://download.pytorch.org/models/resnet50-11ad3fa6.pth',
    'open-mmlab://resnet50_v1c',
    'open-mmlab://resnet101_v1c',
    'open-mmlab://detectron/resnet50_gn',
    'open-mmlab://detectron/resnet101_gn',
})


# ---------------------------------------------------------------------------
# discovery (collection time: text only, no config is executed)

def _is_config(path: Path) -> bool:
    parts = path.relative_to(CONFIG_ROOT).parts
    return not any(part == '_base_' or part.startswith(('_', '.'))
                   for part in parts)


def _discover() -> list[Path]:
    if not CONFIG_ROOT.is_dir():
        return []
    return sorted((p for p in CONFIG_ROOT.rglob('*.py') if _is_config(p)),
                  key=lambda p: p.relative_to(CONFIG_ROOT).as_posix())


_SCOPE_HINTS = (
    re.compile(r"""default_scope\s*=\s*['"](\w+)['"]"""),
    re.compile(r"""['"](mmdet|mmseg|mmaction)::"""),
    re.compile(r'\bmmnorm\.(mmdet|mmseg|mmaction)\b'),
)


def _local_bases(text: str) -> list[str]:
    """The relative ``_base_`` paths of a config's source."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == '_base_'
                for t in node.targets):
            value = node.value
            items = (value.elts if isinstance(value, (ast.List, ast.Tuple))
                     else [value])
            return [item.value for item in items
                    if isinstance(item, ast.Constant)
                    and isinstance(item.value, str)
                    and '::' not in item.value]
    return []


def _toolkit_hint(path: Path, depth: int = 0):
    """The toolkit a config most likely runs in, from its text and its
    local bases' (only picks the default subset; the tests read the real
    ``default_scope``)."""
    text = path.read_text(encoding='utf-8')
    for pattern in _SCOPE_HINTS:
        match = pattern.search(text)
        if match:
            return match.group(1)
    if depth < 8:
        for base in _local_bases(text):
            candidate = (path.parent / base).resolve()
            if candidate.is_file():
                hint = _toolkit_hint(candidate, depth + 1)
                if hint:
                    return hint
    return None


def _representatives(configs: list[Path]) -> set[Path]:
    chosen: dict = {}
    for path in configs:  # sorted: the first file of each group wins
        chosen.setdefault((path.parent, _toolkit_hint(path)), path)
    return set(chosen.values())


CONFIGS = _discover()
DEFAULT_CONFIGS = _representatives(CONFIGS)


def _config_id(path: Path) -> str:
    return path.relative_to(CONFIG_ROOT).as_posix()


def _params(configs: list[Path], all_default: bool = False) -> list:
    return [pytest.param(
        path, id=_config_id(path),
        marks=() if all_default or path in DEFAULT_CONFIGS
        else pytest.mark.slow) for path in configs]


# ---------------------------------------------------------------------------
# shared checks

@functools.cache
def _cached_config(path: Path):
    """Read-only tests share one load per config (fresh copies for the
    tests that modify it come from :func:`_fresh_config`)."""
    return _fresh_config(path)


def _fresh_config(path: Path):
    from mmengine.config import Config
    return Config.fromfile(str(path))


def _toolkit_of(cfg, path: Path) -> str:
    scope = cfg.get('default_scope')
    assert scope in TOOLKITS, (
        f'{_config_id(path)}: default_scope={scope!r}, expected one of '
        f'{TOOLKITS} (inherit a toolkit config)')
    return scope


def _import_custom_modules(cfg, path: Path) -> None:
    from mmengine.utils import import_modules_from_strings
    custom = cfg.get('custom_imports')
    assert custom, f'{_config_id(path)}: no custom_imports for mmnorm'
    imports = custom.get('imports', [])
    imports = [imports] if isinstance(imports, str) else list(imports)
    assert any(name.split('.')[0] == 'mmnorm' for name in imports), (
        f'{_config_id(path)}: custom_imports does not import mmnorm')
    assert not custom.get('allow_failed_imports', False), (
        f'{_config_id(path)}: allow_failed_imports=True would hide a '
        'missing mmnorm')
    import_modules_from_strings(**custom)


def _refuse_download(*args, **kwargs):
    raise AssertionError(f'download attempted: {args[:1]}')


def _forbid_downloads(monkeypatch) -> None:
    """Every way a checkpoint could be fetched raises for this test: the
    remote schemes of mmengine's CheckpointLoader, torch.hub and any
    socket connection."""
    from mmengine.runner.checkpoint import CheckpointLoader
    schemes = OrderedDict(
        (prefix, loader if prefix == '' else _refuse_download)
        for prefix, loader in CheckpointLoader._schemes.items())
    monkeypatch.setattr(CheckpointLoader, '_schemes', schemes)
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url',
                        _refuse_download)
    monkeypatch.setattr(torch.hub, 'download_url_to_file', _refuse_download)
    monkeypatch.setattr(socket.socket, 'connect', _refuse_download)


def _build(toolkit: str, model_cfg):
    from mmengine.model import revert_sync_batchnorm
    # SyncBN needs a process group: as mmengine in non-distributed runs
    return revert_sync_batchnorm(build_in_scope(toolkit, model_cfg))


def _init_weights_quietly(model) -> None:
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # per-parameter init report
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)


def _types_in(node):
    if isinstance(node, dict):
        if isinstance(node.get('type'), str):
            yield node['type']
        for value in node.values():
            yield from _types_in(value)
    elif isinstance(node, (list, tuple)):
        for item in node:
            yield from _types_in(item)


#: backbones whose layers a config names only through the backbone type
_BACKBONE_LAYERS = {'ResNetIBN': 'IBN', 'ResNeXtIBN': 'IBN',
                    'ResNetIBNb': nn.InstanceNorm2d, 'ResNetKN': 'KN'}


def _check_mmnorm_layers_built(model, model_cfg, path: Path) -> None:
    """Every mmnorm layer type the config asks for is in the model (the
    exact class: SSN and SyncSN subclass SN)."""
    import mmnorm
    built = {type(m) for m in model.modules()}
    for name in set(_types_in(model_cfg)):
        wanted = _BACKBONE_LAYERS.get(name, name)
        cls = (mmnorm.NORM_LAYERS.get(wanted) if isinstance(wanted, str)
               else wanted)
        if cls is not None:
            assert cls in built, (
                f'{_config_id(path)}: the config asks for {name} but the '
                f'model has no {cls.__name__}')


_NORMS = (_BatchNorm, nn.GroupNorm, _InstanceNorm, nn.LayerNorm)


def _check_norm_gradients(model, path: Path) -> int:
    """Every trainable parameter of every normalization layer (SN's mixing
    weights included) got a finite gradient; returns how many."""
    checked = 0
    for name, module in model.named_modules():
        is_norm = isinstance(module, _NORMS) or hasattr(module,
                                                        'mean_weight')
        if not is_norm:
            continue
        for pname, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue  # frozen stages, frozen BN
            where = f'{_config_id(path)}: {name}.{pname}'
            assert param.grad is not None, f'{where} got no gradient'
            assert torch.isfinite(param.grad).all(), f'{where}: non-finite'
            checked += 1
    return checked


def _optimizer_and_hooks_step(cfg, toolkit: str, model) -> None:
    """The config's optimizer wrapper (paramwise rules, mmnorm's wrapper)
    and custom hooks build; one step keeps the parameters finite."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import HOOKS, DefaultScope
    with DefaultScope.overwrite_default_scope(toolkit):
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        for hook_cfg in cfg.get('custom_hooks') or []:
            hook_cfg = dict(hook_cfg)
            hook_cfg.pop('priority', None)
            HOOKS.build(hook_cfg)
    optim_wrapper.step()
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all(), f'{name} non-finite after step'


# ---------------------------------------------------------------------------
# every config

def test_configs_found():
    assert (CONFIG_ROOT / 'demo').is_dir()
    assert CONFIGS, 'no config found under configs/'
    assert not any('_base_' in p.parts for p in CONFIGS)


@pytest.mark.parametrize('path', _params(CONFIGS))
def test_config_is_offline_safe(path, monkeypatch):
    """No remote checkpoint but the documented ImageNet ones, no remote
    ``load_from``, and building the unmodified model downloads nothing."""
    cfg = _cached_config(path)
    toolkit = _toolkit_of(cfg, path)
    _import_custom_modules(cfg, path)
    where = _config_id(path)
    for key, checkpoint in pretrained_refs(cfg.model):
        if not is_remote(checkpoint):
            continue
        assert checkpoint in DOCUMENTED_IMAGENET_INITS, (
            f'{where}: {key} downloads {checkpoint}, which is not a '
            'documented ImageNet initialization; default to a local file '
            'or None')
    for key in ('load_from', 'resume_from'):
        assert not is_remote(cfg.get(key)), f'{where}: remote {key}'
    _forbid_downloads(monkeypatch)
    model = _build(toolkit, cfg.model)
    for key, checkpoint in module_pretrained_refs(model):
        assert not is_remote(checkpoint) or (
            checkpoint in DOCUMENTED_IMAGENET_INITS), (
            f'{where}: built module {key} keeps {checkpoint}')


@pytest.mark.parametrize('path', _params(CONFIGS))
def test_config_trains_one_iteration(path, monkeypatch):
    cfg = _fresh_config(path)
    toolkit = _toolkit_of(cfg, path)
    _import_custom_modules(cfg, path)
    shrink_for_cpu(cfg)
    where = _config_id(path)
    _forbid_downloads(monkeypatch)
    model = _build(toolkit, cfg.model)
    remote = [ref for ref in module_pretrained_refs(model)
              if is_remote(ref[1])]
    assert not remote, f'{where}: pretrained weights left on: {remote}'
    _init_weights_quietly(model)  # no download either
    _check_mmnorm_layers_built(model, cfg.model, path)

    loss = train_step(model, config_batch(cfg, batch_size=2))
    assert torch.isfinite(loss), f'{where}: loss {loss}'
    _check_norm_gradients(model, path)
    assert any(p.grad is not None for p in model.parameters())
    _optimizer_and_hooks_step(cfg, toolkit, model)


# ---------------------------------------------------------------------------
# COCO configs: naming scheme <-> settings (see configs/coco/README.md)

COCO_ROOT = CONFIG_ROOT / 'coco'
COCO_CONFIGS = [p for p in CONFIGS if p.parent == COCO_ROOT]
COCO_NAME = re.compile(
    r'^(?P<algo>faster-rcnn|mask-rcnn)_r50-(?P<backbone>frozenbn|gn|sn|ssn'
    r'|syncsn|kn|ibn-a|ibn-b|sw|syncsw|bn|syncbn)_fpn'
    r'(?:-(?P<head>gn|sn|ssn|syncsn|kn))?'
    r'_(?P<schedule>1x|2x)_coco\.py$')
#: name token -> norm layer type
COCO_NORMS = {'gn': 'GN', 'sn': 'SN', 'ssn': 'SSN', 'syncsn': 'SyncSN',
              'kn': 'KN', 'sw': 'SW', 'syncsw': 'SyncSW', 'bn': 'BN',
              'syncbn': 'SyncBN'}
SW_FAMILY = ('SW', 'SyncSW')
SW_MOMENTUM = 0.01  # the SW authors' layer default, keep factor 0.99
SN_FAMILY = ('SN', 'SSN', 'SyncSN', 'SyncSSN')
SN_MOMENTUM = 0.003  # the authors' keep factor 0.997


def _check_norm_cfg(norm_cfg, token: str, where: str) -> None:
    expected = COCO_NORMS[token]
    assert norm_cfg is not None and norm_cfg['type'] == expected, (
        f'{where}: norm_cfg {norm_cfg}, expected {expected}')
    if expected == 'GN':
        assert norm_cfg['num_groups'] == 32, where
    if expected in SW_FAMILY:
        assert norm_cfg.get('momentum') == SW_MOMENTUM, where
        assert norm_cfg.get('num_pergroup') == 16, where
    if expected in SN_FAMILY:
        assert norm_cfg.get('momentum') == SN_MOMENTUM, (
            f'{where}: SN momentum must be {SN_MOMENTUM} (PyTorch '
            'convention of the authors\' 0.997)')


def _check_coco_backbone(cfg, token: str, where: str) -> None:
    backbone = cfg.model.backbone
    where = f'{where} backbone'
    expected_types = {'ibn-a': ('ResNetIBN',), 'ibn-b': ('ResNetIBNb',),
                      'kn': ('ResNetKN', 'ResNet'), 'sw': ('ResNetSW',),
                      'syncsw': ('ResNetSW',)}.get(token, ('ResNet',))
    assert backbone.type in expected_types, where
    assert backbone.depth == 50, where
    if token == 'frozenbn':  # BN-dagger: BN statistics and affine frozen
        assert backbone.norm_cfg == dict(type='BN', requires_grad=False)
        assert backbone.norm_eval and backbone.frozen_stages == 1, where
    elif token in ('ibn-a', 'ibn-b'):  # the ImageNet BN part as in mmdet
        assert backbone.norm_cfg.type == 'BN', where
        assert backbone.init_cfg is None, f'{where}: must default offline'
    elif token == 'kn':  # KN chained through the backbone, trained
        _check_norm_cfg(backbone.norm_cfg, token, where)
        assert backbone.type == 'ResNetKN', f'{where}: KN needs ResNetKN'
        assert backbone.frozen_stages == -1, where
        assert backbone.norm_eval is False, where
        assert backbone.init_cfg is None, f'{where}: must default offline'
    elif token in ('sw', 'syncsw', 'bn', 'syncbn'):  # the SW setting
        if token in ('sw', 'syncsw'):
            _check_norm_cfg(backbone.sw_cfg, token, where)
        other = 'syncbn' if token.startswith('sync') else 'bn'
        _check_norm_cfg(backbone.norm_cfg, other, where)
        assert backbone.norm_cfg.requires_grad, where
        assert backbone.frozen_stages == -1, where
        assert backbone.norm_eval is False, where
        assert backbone.init_cfg is None, f'{where}: must default offline'
    elif token == 'gn':  # Detectron's GN ImageNet weights, caffe inputs
        _check_norm_cfg(backbone.norm_cfg, token, where)
        assert backbone.init_cfg.checkpoint == (
            'open-mmlab://detectron/resnet50_gn'), where
        assert list(cfg.model.data_preprocessor.std) == [1.0, 1.0, 1.0]
        assert not cfg.model.data_preprocessor.bgr_to_rgb, where
    else:  # SN family: trained, not frozen
        _check_norm_cfg(backbone.norm_cfg, token, where)
        assert backbone.frozen_stages == -1, where
        assert backbone.norm_eval is False, where
        assert backbone.init_cfg is None, f'{where}: must default offline'


def _check_coco_head(cfg, token, algo: str, where: str) -> None:
    model = cfg.model
    bbox_head = model.roi_head.bbox_head
    mask_head = model.roi_head.get('mask_head')
    assert (mask_head is not None) == (algo == 'mask-rcnn'), where
    if token is None:  # the baseline head: plain FPN, 2fc box head
        assert model.neck.get('norm_cfg') is None, where
        assert bbox_head.type == 'Shared2FCBBoxHead', where
        assert bbox_head.get('norm_cfg') is None, where
        if mask_head is not None:
            assert mask_head.get('norm_cfg') is None, where
        return
    _check_norm_cfg(model.neck.norm_cfg, token, f'{where} neck')
    assert bbox_head.type == 'Shared4Conv1FCBBoxHead', where
    assert bbox_head.conv_out_channels == 256, where
    _check_norm_cfg(bbox_head.norm_cfg, token, f'{where} bbox_head')
    if mask_head is not None:
        assert mask_head.type == 'FCNMaskHead' and mask_head.num_convs == 4
        _check_norm_cfg(mask_head.norm_cfg, token, f'{where} mask_head')


def _check_coco_optimizer(cfg, tokens: set, where: str) -> None:
    norms = {COCO_NORMS.get(t) for t in tokens}
    if 'KN' in norms:  # necks and heads are chained by the hook
        hooks = [h['type'] for h in cfg.get('custom_hooks') or []]
        assert 'KalmanChainHook' in hooks, where
    if not norms & set(SN_FAMILY + SW_FAMILY):
        return
    keys = cfg.optim_wrapper.paramwise_cfg.custom_keys
    for name in ('.mean_weight', '.var_weight'):
        assert keys[name]['decay_mult'] == 0.0, f'{where}: decay on {name}'
    if 'SSN' in norms:  # the SSN recipe
        assert cfg.optim_wrapper.type == 'MixingWeightClipOptimWrapper'
        assert cfg.optim_wrapper.lambda_max_norm == 1.0, where
        for name in ('.mean_weight', '.var_weight'):
            assert keys[name]['lr_mult'] == 0.1, where
        hooks = [h['type'] for h in cfg.get('custom_hooks') or []]
        assert 'SSNRadiusHook' in hooks, where


def test_coco_configs_exist():
    names = {p.name for p in COCO_CONFIGS}
    for algo, schedule in (('faster-rcnn', '1x'), ('mask-rcnn', '2x')):
        for backbone, head in (('frozenbn', None), ('frozenbn', 'gn'),
                               ('frozenbn', 'sn'), ('gn', 'gn'),
                               ('gn', 'sn'), ('sn', 'sn'), ('ssn', 'ssn'),
                               ('syncsn', 'syncsn'), ('ibn-a', 'gn'),
                               ('ibn-a', 'sn'), ('ibn-b', 'gn'),
                               ('ibn-b', 'sn'), ('kn', 'kn'),
                               ('sw', None), ('syncsw', None), ('bn', None),
                               ('syncbn', None), ('sn', None)):
            neck = 'fpn' if head is None else f'fpn-{head}'
            name = f'{algo}_r50-{backbone}_{neck}_{schedule}_coco.py'
            assert name in names, f'missing configs/coco/{name}'


@pytest.mark.parametrize('path', _params(COCO_CONFIGS, all_default=True))
def test_coco_config_matches_its_name(path):
    """Static (no model is built): what the file name promises is what the
    config sets, in every component, with the authors' settings."""
    match = COCO_NAME.match(path.name)
    assert match, (f'{path.name} does not follow the naming scheme of '
                   'configs/coco/README.md')
    cfg = _cached_config(path)
    where = path.name
    algo, schedule = match['algo'], match['schedule']
    assert cfg.default_scope == 'mmdet'
    assert 'mmnorm.mmdet' in cfg.custom_imports.imports, where
    assert cfg.train_cfg.max_epochs == {'1x': 12, '2x': 24}[schedule]
    assert cfg.auto_scale_lr.base_batch_size == 16, where
    assert cfg.train_dataloader.batch_size == 2, where
    assert cfg.get('load_from') is None, where
    _check_coco_backbone(cfg, match['backbone'], where)
    _check_coco_head(cfg, match['head'], algo, where)
    _check_coco_optimizer(cfg, {match['backbone'], match['head']}, where)


def test_coco_readme_lists_every_config():
    readme = (COCO_ROOT / 'README.md').read_text(encoding='utf-8')
    missing = [p.name for p in COCO_CONFIGS if p.name not in readme]
    assert not missing, f'configs/coco/README.md does not mention {missing}'
