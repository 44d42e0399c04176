"""Wrappers that keep the toolkits' BN-only conversions from silently
breaking mmnorm (applied by :mod:`mmnorm.compat.patches`).

mmnorm layers subclass ``_BatchNorm`` so that the toolkits treat them like BN
where that is right (``norm_eval``, weight decay rules, init, checkpoints).
Three conversions also key on ``_BatchNorm`` and would be wrong for them:

* ``sync_bn`` (mmengine's / torch's ``convert_sync_batchnorm``) would
  replace every ``_BatchNorm`` by ``SyncBatchNorm``, dropping SN's IN and LN
  branches. Wrapped to turn each layer with a registered sync pair
  (:func:`mmnorm.compat.register_sync_pair`: SN -> SyncSN, SSN -> SyncSSN)
  into its synchronized version and to hand every other BN layer to the
  original converter; other registered ``_BatchNorm`` layers (KN, SyncSN)
  are left alone, and registered composite layers (IBN) are entered, so
  their BN part becomes SyncBN.
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
from typing import Callable

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .registry import is_norm_layer


def unfoldable_layers(module: nn.Module) -> list[str]:
    """Names of the layers in ``module`` that declare
    ``folds_into_conv = False`` ('' is ``module`` itself)."""
    return [name for name, m in module.named_modules()
            if getattr(m, 'folds_into_conv', True) is False]


def _describe(names: list[str]) -> str:
    shown = ', '.join(repr(n) for n in names[:5])
    more = f' and {len(names) - 5} more' if len(names) > 5 else ''
    return f'{shown}{more}'


FUSE_ADVICE = 'Run without --fuse-conv-bn / fuse_conv_bn for this model.'
EFFICIENT_ADVICE = ("Remove 'efficient_conv_bn_eval' for the modules that "
                    'contain mmnorm layers.')


def refuse_folding(what: str, advice: str) -> Callable:
    """``wrap(func)``: ``func`` raises a ``ValueError`` naming the layers
    that cannot be folded when one of its module arguments holds any, and
    runs unchanged otherwise. A ``False`` second argument (``ConvModule.
    turn_on_efficient_conv_bn_eval(False)``, called by every ConvModule)
    folds nothing and is let through."""

    def wrap(func: Callable) -> Callable:

        @functools.wraps(func)
        def guarded(*args, **kwargs):
            if args[1:2] == (False,) or \
                    kwargs.get('efficient_conv_bn_eval', True) is False:
                return func(*args, **kwargs)
            names = []
            for arg in (*args, *kwargs.values()):
                if isinstance(arg, nn.Module):
                    names += [f'{type(arg).__name__}.{n}' if n else
                              type(arg).__name__
                              for n in unfoldable_layers(arg)]
            if names:
                raise ValueError(
                    f'{what} cannot be applied to mmnorm layers (they are not '
                    f'BatchNorm: their output depends on each sample, not '
                    f'only on running statistics); found '
                    f'{_describe(names)}. {advice}')
            return func(*args, **kwargs)

        return guarded

    return wrap


def _convert_with_mmnorm(module: nn.Module, convert: Callable,
                         process_group) -> nn.Module:
    from ..layers.sync import convert_sync_sn

    def convert_others(module):
        if isinstance(module, _BatchNorm):
            # mmnorm's own (KN, SyncSN, ...) stay; others go to `convert`
            return module if is_norm_layer(module) else convert(module)
        for name, child in module.named_children():
            new = convert_others(child)
            if new is not child:
                setattr(module, name, new)
        return module

    return convert_others(convert_sync_sn(module, process_group))


def _has_mmnorm(module: nn.Module) -> bool:
    return any(is_norm_layer(m) for m in module.modules())


def sync_with_mmnorm(convert: Callable) -> Callable:
    """Wrap mmengine's ``convert_sync_batchnorm(module, implementation)``
    as described in the module doc."""

    @functools.wraps(convert)
    def converted(module, *args, **kwargs):
        if not _has_mmnorm(module):
            return convert(module, *args, **kwargs)
        return _convert_with_mmnorm(
            module, lambda m: convert(m, *args, **kwargs), None)

    return converted


def torch_sync_with_mmnorm(convert: Callable) -> Callable:
    """Wrap the function of torch's classmethod
    ``SyncBatchNorm.convert_sync_batchnorm(cls, module, process_group)``;
    the mmnorm layers use the same ``process_group``."""

    @functools.wraps(convert)
    def converted(cls, module, process_group=None):
        if not _has_mmnorm(module):
            return convert(cls, module, process_group)
        return _convert_with_mmnorm(
            module, lambda m: convert(cls, m, process_group), process_group)

    return converted


def install() -> None:
    """Apply mmnorm's patches (kept for old callers; see
    :func:`mmnorm.compat.patches.install`)."""
    from .patches import install as install_patches
    install_patches()
