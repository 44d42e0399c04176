"""Keep the toolkits' BN-only conversions from silently breaking mmnorm.

mmnorm layers subclass ``_BatchNorm`` so that the toolkits treat them like BN
where that is right (``norm_eval``, weight decay rules, init, checkpoints).
Three conversions also key on ``_BatchNorm`` and would be wrong for them:

* ``sync_bn`` (mmengine's / torch's ``convert_sync_batchnorm``) would
  replace every ``_BatchNorm`` by ``SyncBatchNorm``, dropping SN's IN and LN
  branches. Wrapped here to turn SN / SSN into SyncSN / SyncSSN instead and
  to hand every other BN layer to the original converter; other mmnorm
  layers are left alone.
* mmcv's ``fuse_conv_bn`` (``--fuse-conv-bn``) folds an eval-mode BN into
  the preceding conv from its running statistics;
* ``efficient_conv_bn_eval`` (mmcv's ``ConvModule`` and mmengine's graph
  rewrite) does the same folding on the fly.

A layer whose eval-mode output is not a fixed affine map declares
``folds_into_conv = False``; the two folding entry points raise a
``ValueError`` naming such layers instead of changing the model. Models
without mmnorm layers are converted exactly as before.
"""
from __future__ import annotations

import functools
import importlib
import sys
from typing import Callable

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

_MARK = '__mmnorm_guarded__'


def unfoldable_layers(module: nn.Module) -> list[str]:
    """Names of the layers in ``module`` that declare
    ``folds_into_conv = False`` ('' is ``module`` itself)."""
    return [name for name, m in module.named_modules()
            if getattr(m, 'folds_into_conv', True) is False]


def _stays_unsynced(module: nn.Module) -> bool:
    """mmnorm layers that SyncBN converters must not turn into SyncBN:
    the unfoldable ones (they get their own synchronized version) and those
    declaring ``sync_bn_convertible = False`` (KN: its own statistics)."""
    return (getattr(module, 'folds_into_conv', True) is False
            or getattr(module, 'sync_bn_convertible', True) is False)


def _describe(names: list[str]) -> str:
    shown = ', '.join(repr(n) for n in names[:5])
    more = f' and {len(names) - 5} more' if len(names) > 5 else ''
    return f'{shown}{more}'


def _guard(func: Callable, what: str, advice: str,
           module_arg: int = 0) -> Callable:
    if getattr(func, _MARK, False):
        return func

    @functools.wraps(func)
    def guarded(*args, **kwargs):
        module = args[module_arg] if len(args) > module_arg else None
        if module is None:
            module = next(iter(kwargs.values()), None)
        if isinstance(module, nn.Module):
            names = unfoldable_layers(module)
            if names:
                raise ValueError(
                    f'{what} cannot be applied to mmnorm layers (they are not '
                    f'BatchNorm: their output depends on each sample, not '
                    f'only on running statistics); found '
                    f'{_describe(names)}. {advice}')
        return func(*args, **kwargs)

    setattr(guarded, _MARK, True)
    return guarded


_FUSE_ADVICE = 'Run without --fuse-conv-bn / fuse_conv_bn for this model.'
_EFFICIENT_ADVICE = ("Remove 'efficient_conv_bn_eval' for the modules that "
                     'contain mmnorm layers.')


def _rebind(module_names: list[str], attr: str, new: Callable) -> None:
    for name in module_names:
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, attr):
            setattr(mod, attr, new)


def _sync_with_mmnorm(convert: Callable,
                      takes_process_group: bool = False) -> Callable:
    """Wrap a BN->SyncBN converter so that mmnorm layers get their own
    synchronized versions and every other BN goes to ``convert``.
    ``takes_process_group``: ``convert``'s second argument is torch's
    ``process_group``, which the mmnorm layers then use too."""
    if getattr(convert, _MARK, False):
        return convert
    from ..layers.sync import convert_sync_sn

    def convert_others(module, args, kwargs):
        if _stays_unsynced(module):
            return module
        if isinstance(module, _BatchNorm):
            return convert(module, *args, **kwargs)
        for name, child in module.named_children():
            new = convert_others(child, args, kwargs)
            if new is not child:
                setattr(module, name, new)
        return module

    @functools.wraps(convert)
    def converted(module, *args, **kwargs):
        if not any(_stays_unsynced(m) for m in module.modules()):
            return convert(module, *args, **kwargs)
        group = None
        if takes_process_group:
            group = args[0] if args else kwargs.get('process_group')
        return convert_others(convert_sync_sn(module, group), args, kwargs)

    setattr(converted, _MARK, True)
    return converted


def install() -> None:
    """Wrap the conversions listed in the module docstring (idempotent)."""
    import mmengine.model.efficient_conv_bn_eval as ecbe
    import mmengine.model.utils as mme_utils
    import torch

    sync = _sync_with_mmnorm(mme_utils.convert_sync_batchnorm)
    _rebind(['mmengine.model.utils', 'mmengine.model',
             'mmengine.runner.runner'], 'convert_sync_batchnorm', sync)

    torch_convert = torch.nn.SyncBatchNorm.convert_sync_batchnorm
    if not getattr(torch_convert, _MARK, False):
        torch.nn.SyncBatchNorm.convert_sync_batchnorm = staticmethod(
            _sync_with_mmnorm(torch_convert, takes_process_group=True))

    ecbe.turn_on_efficient_conv_bn_eval_for_single_model = _guard(
        ecbe.turn_on_efficient_conv_bn_eval_for_single_model,
        "mmengine's efficient_conv_bn_eval", _EFFICIENT_ADVICE)

    try:
        # import_module: the package attribute 'fuse_conv_bn' is the
        # function, which shadows the submodule of the same name.
        conv_module = importlib.import_module('mmcv.cnn.bricks.conv_module')
        fuse_mod = importlib.import_module('mmcv.cnn.utils.fuse_conv_bn')
    except ImportError:  # mmcv is optional for the layers themselves
        return
    fuse = _guard(fuse_mod.fuse_conv_bn, "mmcv's fuse_conv_bn", _FUSE_ADVICE)
    _rebind(['mmcv.cnn.utils.fuse_conv_bn', 'mmcv.cnn.utils', 'mmcv.cnn'],
            'fuse_conv_bn', fuse)
    # Code that imported fuse_conv_bn before mmnorm holds the original;
    # it still folds through this module-level helper.
    fold = fuse_mod._fuse_conv_bn
    if not getattr(fold, _MARK, False):

        @functools.wraps(fold)
        def guarded_fold(conv, bn):
            if getattr(bn, 'folds_into_conv', True) is False:
                raise ValueError(
                    f"mmcv's fuse_conv_bn cannot fold the mmnorm layer "
                    f'{type(bn).__name__} into a conv (it is not BatchNorm: '
                    f'its output depends on each sample). {_FUSE_ADVICE}')
            return fold(conv, bn)

        setattr(guarded_fold, _MARK, True)
        fuse_mod._fuse_conv_bn = guarded_fold

    conv_cls = conv_module.ConvModule
    turn_on = conv_cls.turn_on_efficient_conv_bn_eval
    if not getattr(turn_on, _MARK, False):

        @functools.wraps(turn_on)
        def guarded_turn_on(self, efficient_conv_bn_eval=True):
            if efficient_conv_bn_eval and getattr(
                    self.norm, 'folds_into_conv', True) is False:
                raise ValueError(
                    'ConvModule(efficient_conv_bn_eval=True) cannot fold '
                    f'the mmnorm layer {type(self.norm).__name__} into its '
                    f'conv (it is not BatchNorm). {_EFFICIENT_ADVICE}')
            return turn_on(self, efficient_conv_bn_eval)

        setattr(guarded_turn_on, _MARK, True)
        conv_cls.turn_on_efficient_conv_bn_eval = guarded_turn_on
