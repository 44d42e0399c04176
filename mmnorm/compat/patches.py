"""Every patch mmnorm applies to toolkit code, in one declarative list.

Each :class:`Patch` names the upstream functions it wraps, what it fixes and
when it can go. :func:`install` (run by ``import mmnorm``, so a config with
only ``custom_imports=dict(imports=['mmnorm'])`` gets all of them) applies
each patch to the modules that are already imported and puts an import
hook on :data:`sys.meta_path` for the others: a patch of ``mmdet.models.x``
is applied right after ``mmdet.models.x`` is executed, whenever that
happens. Importing mmnorm never imports mmdet, mmseg or mmaction2.

Every wrapper is keyed on the layers it is given: a model without mmnorm
layers goes through the toolkit's own code unchanged. The wrappers consult
:mod:`mmnorm.compat.registry` at call time, so a layer registered after
the patch was applied (e.g. Switchable Whitening) is handled too.

To see what is in place: :func:`applied`; to take everything out again
(tests, or to check whether a fix is still needed): :func:`uninstall`.
The table of every BN-keyed toolkit path and what mmnorm does about it is
``docs/bn_paths.md``.
"""
from __future__ import annotations

import importlib.abc
import sys
import types
from dataclasses import dataclass
from typing import Callable, Optional

from . import guards, toolkit_fixes

_MARK = '__mmnorm_patch__'


@dataclass(frozen=True)
class Patch:
    """One fix of toolkit code.

    Attributes:
        name: short identifier (also in ``docs/bn_paths.md``).
        targets: ``'package.module:Qualified.name'`` of each upstream
            function wrapped, all with the same ``wrap``.
        fixes: what goes wrong without the patch.
        remove_when: the upstream condition under which it can go.
        wrap: ``wrap(original) -> replacement``.
        also_in: modules that import a wrapped module-level function by
            value (``from x import f``); rebound if imported before.
    """
    name: str
    targets: tuple[str, ...]
    fixes: str
    remove_when: str
    wrap: Callable[[Callable], Callable]
    also_in: tuple[str, ...] = ()


_NORM_EVAL_TRAIN = (
    'mmdet.models.backbones.csp_darknet:CSPDarknet.train',
    'mmdet.models.backbones.cspnext:CSPNeXt.train',
    'mmdet.models.backbones.darknet:Darknet.train',
    'mmdet.models.backbones.efficientnet:EfficientNet.train',
    'mmdet.models.backbones.hrnet:HRNet.train',
    'mmdet.models.backbones.mobilenet_v2:MobileNetV2.train',
    'mmdet.models.backbones.resnet:ResNet.train',
    'mmdet.models.roi_heads.shared_heads.res_layer:ResLayer.train',
    'mmseg.models.backbones.cgnet:CGNet.train',
    'mmseg.models.backbones.hrnet:HRNet.train',
    'mmseg.models.backbones.mobilenet_v2:MobileNetV2.train',
    'mmseg.models.backbones.mobilenet_v3:MobileNetV3.train',
    'mmseg.models.backbones.resnet:ResNet.train',
    'mmseg.models.backbones.unet:UNet.train',
    'mmaction.models.backbones.mobilenet_v2:MobileNetV2.train',
    'mmaction.models.backbones.resnet:ResNet.train',
    'mmaction.models.backbones.resnet3d:ResNet3d.train',
    'mmaction.models.backbones.resnet3d:ResNet3dLayer.train',
    'mmaction.models.backbones.resnet3d_csn:ResNet3dCSN.train',
    'mmaction.models.backbones.resnet_audio:ResNetAudio.train',
    'mmaction.models.backbones.x3d:X3D.train',
)

PATCHES: tuple[Patch, ...] = (
    Patch(
        name='sync-bn',
        targets=('mmengine.model.utils:convert_sync_batchnorm',),
        also_in=('mmengine.model', 'mmengine.runner.runner'),
        fixes="cfg.sync_bn='torch'/'mmcv' turns every _BatchNorm, SN "
              'included, into SyncBatchNorm (dropping its IN/LN branches); '
              'registered layers now become their registered sync version '
              '(SN -> SyncSN) and KN stays KN.',
        remove_when='never upstream (mmengine knows no mmnorm layers); '
                    'goes if mmnorm layers stop subclassing _BatchNorm',
        wrap=guards.sync_with_mmnorm),
    Patch(
        name='torch-sync-bn',
        targets=('torch.nn.modules.batchnorm:'
                 'SyncBatchNorm.convert_sync_batchnorm',),
        fixes='the same for torch.nn.SyncBatchNorm.convert_sync_batchnorm '
              "(mmdet's RTMDet(use_syncbn=True) calls it).",
        remove_when='as sync-bn',
        wrap=guards.torch_sync_with_mmnorm),
    Patch(
        name='fuse-conv-bn',
        targets=('mmcv.cnn.utils.fuse_conv_bn:fuse_conv_bn',
                 'mmcv.cnn.utils.fuse_conv_bn:_fuse_conv_bn'),
        also_in=('mmcv.cnn.utils', 'mmcv.cnn', 'mmcv'),
        fixes='--fuse-conv-bn would fold SN/SSN (not an affine map in '
              'eval mode) into the conv from running statistics only, '
              'silently changing the model; now a ValueError naming them.',
        remove_when='as sync-bn',
        wrap=guards.refuse_folding("mmcv's fuse_conv_bn",
                                   guards.FUSE_ADVICE)),
    Patch(
        name='efficient-conv-bn-eval',
        targets=('mmengine.model.efficient_conv_bn_eval:'
                 'turn_on_efficient_conv_bn_eval_for_single_model',
                 'mmcv.cnn.bricks.conv_module:'
                 'ConvModule.turn_on_efficient_conv_bn_eval'),
        fixes='efficient_conv_bn_eval folds an eval-mode _BatchNorm into '
              'its conv on the fly: the same silent change; now a '
              'ValueError.',
        remove_when='as sync-bn',
        wrap=guards.refuse_folding("efficient_conv_bn_eval",
                                   guards.EFFICIENT_ADVICE)),
    Patch(
        name='norm-eval',
        targets=_NORM_EVAL_TRAIN,
        fixes='norm_eval=True left layers in training mode where the '
              'toolkit tests nn.BatchNorm2d (mmdet EfficientNet, the '
              'ResLayer shared head of the C4 detectors: SN stayed in '
              'training) or _BatchNorm (registered layers that are not '
              '_BatchNorm, e.g. Switchable Whitening).',
        remove_when='mmdet tests _BatchNorm in EfficientNet/ResLayer and '
                    'mmnorm has no layer outside _BatchNorm',
        wrap=toolkit_fixes.norm_eval_train),
    Patch(
        name='partial-bn',
        targets=('mmaction.models.backbones.resnet:ResNet._partial_bn',),
        fixes='mmaction2 2D ResNet(partial_bn=True) (TSN/TSM recipes) '
              'froze only nn.BatchNorm2d: no SN/SSN/KN layer was frozen.',
        remove_when='mmaction2 tests _BatchNorm there and mmnorm has no '
                    'layer outside _BatchNorm',
        wrap=toolkit_fixes.partial_bn),
    Patch(
        name='torchvision-bn-loader',
        targets=('mmaction.models.backbones.resnet:ResNet._load_bn_params',),
        fixes="ResNet(pretrained='torchvision://...') asks the BN "
              "checkpoint for every parameter of the norm: KeyError "
              "'bn1.mean_weight' (SN) / 'bn1.IN.weight' (IBN).",
        remove_when='mmaction2 loads BN entries by name (never for IBN)',
        wrap=toolkit_fixes.load_bn_params),
    Patch(
        name='inflate-bn-loader',
        targets=('mmaction.models.backbones.resnet3d:'
                 'ResNet3d._inflate_bn_params',),
        fixes='the same KeyError when inflating a 2D checkpoint into a 3D '
              'ResNet (pretrained2d=True); see mmnorm.models.inflate.',
        remove_when='as torchvision-bn-loader',
        wrap=toolkit_fixes.inflate_bn_params),
    Patch(
        name='tsm-bn-loader',
        targets=('mmaction.models.backbones.resnet_tsm:'
                 'ResNetTSM.load_original_weights',),
        fixes='ResNetTSM (TSM recipes, pretrained2d=True) loads renamed '
              'torchvision BN keys with load_state_dict: IBN layers got '
              'nothing (SW takes BN keys in its own _load_from_state_dict).',
        remove_when='never upstream; goes with IBN',
        wrap=toolkit_fixes.tsm_load_original_weights),
    Patch(
        name='checkpoint-bn-loader',
        targets=('mmengine.runner.checkpoint:load_state_dict',),
        also_in=('mmengine.runner',),
        fixes='load_checkpoint / init_cfg=Pretrained with a BN checkpoint '
              'loaded nothing into layers whose keys differ from BN '
              "(IBN's bn1.IN.weight, bn1.BN.weight).",
        remove_when='never upstream; goes with IBN',
        wrap=toolkit_fixes.load_state_dict),
    Patch(
        name='norm-weight-decay',
        targets=('mmengine.optim.optimizer.default_constructor:'
                 'DefaultOptimWrapperConstructor.add_params',
                 'mmseg.engine.optimizers.force_default_constructor:'
                 'ForceDefaultOptimWrapperConstructor.add_params'),
        fixes='norm_decay_mult / bias_decay_mult test _BatchNorm: '
              'registered layers outside _BatchNorm (Switchable Whitening) '
              'got the conv rule.',
        remove_when='mmnorm has no layer outside _BatchNorm',
        wrap=toolkit_fixes.norm_add_params),
    Patch(
        name='tsm-optim-norms',
        targets=('mmaction.engine.optimizers.tsm_optim_wrapper_constructor:'
                 'TSMOptimWrapperConstructor.add_params',),
        fixes="TSMOptimWrapperConstructor raised 'New atomic module type: "
              "InstanceNorm2d' for IBN (and for any registered layer "
              'outside _BatchNorm); they now join its norm group.',
        remove_when='mmnorm has no layer outside _BatchNorm, IBN gone',
        wrap=toolkit_fixes.tsm_add_params),
    Patch(
        name='sync-norm-hook',
        targets=('mmdet.engine.hooks.sync_norm_hook:get_norm_states',),
        fixes="mmdet's SyncNormHook (YOLOX) averages _NormBase states "
              'across ranks: registered layers outside it were skipped.',
        remove_when='mmnorm has no layer outside _BatchNorm',
        wrap=toolkit_fixes.norm_states),
    Patch(
        name='zero-init-residual',
        targets=('mmengine.model.weight_init:constant_init',),
        also_in=('mmengine.model',),
        fixes='zero_init_residual (constant_init(norm, 0)) sets '
              "module.weight: a composite layer without one (IBN) kept its "
              'initialisation; now each of its parts is set.',
        remove_when='never upstream; goes with IBN',
        wrap=toolkit_fixes.constant_init),
    Patch(
        name='flops-counter',
        targets=('mmcv.cnn.utils.flops_counter:get_modules_mapping',),
        fixes="mmcv's get_model_complexity_info counts norms by exact "
              'class: every mmnorm layer counted 0 FLOPs; now counted '
              'like BN (one pass, two with affine).',
        remove_when='never upstream',
        wrap=toolkit_fixes.flops_mapping),
)

#: run once before the first submodule of a package is looked up: makes
#: mmaction2 1.2.0 importable (its packaging bugs, upstream issue 2714)
_BEFORE_IMPORT = {'mmaction.': toolkit_fixes.mmaction_importable}
_before_done: set[str] = set()

_installed = False


def _split(target: str) -> tuple[str, list[str]]:
    module, _, qualname = target.partition(':')
    return module, qualname.split('.')


def _owner(module: types.ModuleType, path: list[str]) -> Optional[object]:
    owner = module
    for part in path[:-1]:
        owner = getattr(owner, part, None)
        if owner is None:
            return None
    return owner


def _apply_target(patch: Patch, target: str) -> bool:
    module_name, path = _split(target)
    module = sys.modules.get(module_name)
    if module is None:
        return False
    owner = _owner(module, path)
    attr = path[-1]
    if owner is None:
        return False
    raw = owner.__dict__.get(attr) if isinstance(owner, type) \
        else getattr(owner, attr, None)
    if raw is None:
        return False
    kind = type(raw) if isinstance(raw, (staticmethod, classmethod)) \
        else None
    func = raw.__func__ if kind else raw
    if getattr(func, _MARK, None) is not None:
        return True
    new = patch.wrap(func)
    setattr(new, _MARK, (patch.name, raw))
    setattr(owner, attr, kind(new) if kind else new)
    if owner is module:
        for name in patch.also_in:
            other = sys.modules.get(name)
            if other is not None and getattr(other, attr, None) is func:
                setattr(other, attr, new)
    return True


def _apply_module(module_name: str) -> None:
    for patch in PATCHES:
        for target in patch.targets:
            if _split(target)[0] == module_name:
                _apply_target(patch, target)


_WATCHED = frozenset(_split(t)[0] for p in PATCHES for t in p.targets)


def _watched() -> frozenset[str]:
    """The modules that hold a patch target."""
    return _WATCHED


class _PatchingFinder(importlib.abc.MetaPathFinder):
    """Applies the patches of a module right after it is executed."""

    def find_spec(self, fullname, path, target=None):
        for prefix, before in _BEFORE_IMPORT.items():
            if fullname.startswith(prefix) and prefix not in _before_done:
                _before_done.add(prefix)
                before()
        if fullname not in _watched():
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, 'exec_module'):
            return spec
        original = loader.exec_module

        def exec_module(module):
            original(module)
            _apply_module(fullname)

        # one loader per module: an instance attribute patches only it
        loader.exec_module = exec_module
        return spec


_FINDER = _PatchingFinder()


def install() -> None:
    """Apply every patch to the imported modules and watch for the others
    (idempotent)."""
    global _installed
    for module_name in sorted(_watched()):
        if module_name in sys.modules:
            _apply_module(module_name)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    _installed = True


def _resolve(target: str) -> tuple[Optional[object], str]:
    module_name, path = _split(target)
    module = sys.modules.get(module_name)
    return (_owner(module, path) if module else None), path[-1]


def uninstall(names: Optional[tuple[str, ...]] = None) -> None:
    """Restore the upstream functions of the patches ``names`` (default:
    all, and stop watching imports). Objects that copied a patched
    function meanwhile keep it."""
    global _installed
    for patch in PATCHES:
        if names is not None and patch.name not in names:
            continue
        for target in patch.targets:
            owner, attr = _resolve(target)
            if owner is None:
                continue
            current = owner.__dict__.get(attr) if isinstance(owner, type) \
                else getattr(owner, attr, None)
            func = getattr(current, '__func__', current)
            mark = getattr(func, _MARK, None)
            if mark is None:
                continue
            setattr(owner, attr, mark[1])
            for name in patch.also_in:
                other = sys.modules.get(name)
                if other is not None and getattr(other, attr, None) is func:
                    setattr(other, attr, mark[1])
    if names is None:
        if _FINDER in sys.meta_path:
            sys.meta_path.remove(_FINDER)
        _installed = False


def applied() -> dict[str, list[str]]:
    """``{patch name: [targets in place]}`` for the imported modules."""
    out: dict[str, list[str]] = {}
    for patch in PATCHES:
        for target in patch.targets:
            owner, attr = _resolve(target)
            if owner is None:
                continue
            current = owner.__dict__.get(attr) if isinstance(owner, type) \
                else getattr(owner, attr, None)
            func = getattr(current, '__func__', current)
            if getattr(func, _MARK, None) is not None:
                out.setdefault(patch.name, []).append(target)
    return out


def is_applied(name: str) -> bool:
    """Whether the patch ``name`` is in place on at least one target."""
    return name in applied()
